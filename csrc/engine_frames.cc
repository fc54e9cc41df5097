// The worker side of the engine: a writer worker takes queued records into a
// frame, runs their deferred encoders, deduplicates their payloads against
// this frame and the frames already written, lays out the record table and
// data block (NextFrame), and once the frame is on disk publishes its
// payloads for deduplication and releases its records (CommitFrame).

#include <chrono>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine.h"
#include "status.h"

namespace tfdump {
namespace {

constexpr size_t kMaxFrameRecords = 16384;  // bounds a frame's bookkeeping when tensors are tiny
constexpr size_t kMinIndexedPayload = 64;   // smaller payloads are deduplicated within a frame only
constexpr uint32_t kNonNumericFlags = kFlagString | kFlagVariant | kFlagResource;

struct BlobRef {
  const uint8_t* data;
  size_t size;
  uint32_t elem_size;
  Hash128 hash;
  uint32_t unique;  // index of the frame's distinct (address, size) entry
};

// A record's payload after deferred encoding, with its hashes.
struct Prepared {
  std::string encoded;  // main payload produced by an encoder
  const uint8_t* main = nullptr;
  size_t main_len = 0;
  Hash128 main_hash{0, 0};
  std::vector<BlobRef> blobs;
  bool failed = false;
  void Reset() {
    if (encoded.capacity() > (1u << 20)) {
      std::string().swap(encoded);  // do not keep a huge encoding's buffer for good
    } else {
      encoded.clear();
    }
    main = nullptr;
    main_len = 0;
    main_hash = Hash128{0, 0};
    blobs.clear();
    failed = false;
  }
};

struct PtrKey {
  const uint8_t* p;
  size_t n;
  bool operator==(const PtrKey& o) const { return p == o.p && n == o.n; }
};
struct PtrKeyHash {
  size_t operator()(const PtrKey& k) const { return std::hash<const void*>()(k.p) ^ (k.n * 0x9E3779B97F4A7C15ull); }
};
struct UniqueBlob {
  const uint8_t* data;
  size_t size;
  uint32_t elem_size;
  Hash128 hash;
  bool handled;  // stored in this frame, or known to be in an earlier one
};

// Per-frame state shared by the records of one frame. Variant records attach
// the same element buffers over and over (a TensorList dumped at every loop
// iteration shares its elements with every earlier dump), so distinct
// payloads are remembered by (address, size): every owner stays alive until
// the frame is committed, so an address cannot be reused meanwhile.
struct FrameCtx {
  FlatMap<PtrKey, uint32_t, PtrKeyHash> memo;
  std::vector<UniqueBlob> uniques;

  uint32_t Unique(const uint8_t* data, size_t size, uint32_t elem_size) {
    auto slot = memo.TryEmplace(PtrKey{data, size}, static_cast<uint32_t>(uniques.size()));
    if (!slot.second) return *slot.first;
    uniques.push_back(UniqueBlob{data, size, elem_size, HashBytes(data, size), false});
    return *slot.first;
  }
};

struct SinkImpl {
  Prepared* prepared;
  FrameCtx* ctx;
};

void SinkAppend(tfdump_encode_sink* sink, const void* data, size_t size) {
  static_cast<SinkImpl*>(sink->impl)->prepared->encoded.append(static_cast<const char*>(data), size);
}
uint32_t SinkAddBlob(tfdump_encode_sink* sink, const void* data, size_t size, uint32_t elem_size) {
  auto* impl = static_cast<SinkImpl*>(sink->impl);
  const auto* p = static_cast<const uint8_t*>(data);
  const uint32_t u = impl->ctx->Unique(p, size, elem_size);
  impl->ctx->uniques[u].elem_size = elem_size;
  impl->prepared->blobs.push_back(BlobRef{p, size, elem_size, impl->ctx->uniques[u].hash, u});
  return static_cast<uint32_t>(impl->prepared->blobs.size() - 1);
}
void SinkHash(tfdump_encode_sink* sink, const void* data, size_t size, uint8_t out[16]) {
  auto* impl = static_cast<SinkImpl*>(sink->impl);
  const Hash128& h = impl->ctx->uniques[impl->ctx->Unique(static_cast<const uint8_t*>(data), size, 0)].hash;
  std::memcpy(out, &h.h1, 8);
  std::memcpy(out + 8, &h.h2, 8);
}
std::atomic<uint64_t> g_frame_ids{1};

}  // namespace

// A worker's scratch for laying out one frame, reused frame after frame
// (thread-local): the per-record payloads and the frame's payload indexes.
struct Engine::FrameScratch {
  FrameCtx ctx;                                 // distinct attached blobs
  std::vector<Prepared> prepared;               // per record, after encoding
  FlatSet<Hash128, Hash128Hasher> frame_hashes;  // payloads stored in this frame or earlier ones
  // Hashes of this frame's copied payloads by address: an aliased record
  // (Record::aliased) shares its payload's address with an earlier record,
  // whose hash it reuses instead of hashing the bytes again.
  FlatMap<PtrKey, Hash128, PtrKeyHash> copied;
};

void Engine::StoreBlob(Frame* frame, const Hash128& h, const uint8_t* p, size_t n, uint32_t elem_size, bool numeric,
                       FlatSet<Hash128, Hash128Hasher>* frame_hashes) {
  if (!frame_hashes->Insert(h)) {
    st_deduped_.fetch_add(n, std::memory_order_relaxed);
    return;
  }
  const uint64_t offset = frame->data.size();
  const bool shuffle = options_.shuffle && numeric && elem_size > 1 && elem_size <= 16 && n >= elem_size;
  frame->data.resize(offset + n);
  if (shuffle) {
    Shuffle(p, n, elem_size, frame->data.data() + offset);
  } else {
    std::memcpy(frame->data.data() + offset, p, n);
  }
  frame->table.Blob(h, n, offset, shuffle ? kFilterShuffle : kFilterNone, shuffle ? uint8_t(elem_size) : uint8_t(0));
  frame->new_hashes.emplace_back(h, n);
  st_stored_.fetch_add(n, std::memory_order_relaxed);
}

std::unique_ptr<Frame> Engine::NextFrame(int worker, int timeout_ms, bool* finished) {
  *finished = false;
  if (worker < 0 || worker >= options_.workers) return nullptr;
  if (boosted_.load(std::memory_order_relaxed)) MaybeUnboostWorkers();
  if (!WaitForWork(timeout_ms, finished)) return nullptr;
  std::unique_ptr<Frame> frame = TakeRecords(worker);
  if (!frame) return nullptr;
  thread_local FrameScratch scratch;
  EncodeAndHash(frame.get(), &scratch);
  FindCommittedPayloads(frame.get(), &scratch);
  LayOutRecords(frame.get(), &scratch);
  return frame;
}

bool Engine::WaitForWork(int timeout_ms, bool* finished) {
  static thread_local uint64_t seen_kicks = 0;
  {
    std::unique_lock<std::mutex> lk(work_mu_);
    // Work is ready when a frame's worth of payload waits, when someone
    // asked for partial frames (end of run, flush), or when producers are
    // blocked on the budget: records that are small on disk (variants,
    // encoded later) can fill the budget long before they fill a frame.
    auto ready = [&] {
      if (Deferring()) return false;
      // Partial frames go out when asked for (end of run), while a flush
      // waits, while producers wait, and whenever no run is executing:
      // otherwise records that are small on disk (variants) would sit until
      // the flush interval times out, one frame per interval.
      return pending_bytes_.load() >= options_.frame_bytes ||
             (pending_records_.load() > 0 && (kicks_.load() != seen_kicks || budget_waiters_.load() > 0 ||
                                               flushing_.load() > 0 || open_runs_.load() == 0)) ||
             shutdown_.load();
    };
    idle_workers_.fetch_add(1);
    work_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), ready);
    idle_workers_.fetch_sub(1);
  }
  if (Deferring()) return false;  // timed out while a run executes: keep waiting
  seen_kicks = kicks_.load();
  if (pending_records_.load() == 0) {
    if (shutdown_.load() && outstanding_.load() == 0) *finished = true;
    return false;
  }
  return true;
}

std::unique_ptr<Frame> Engine::TakeRecords(int worker) {
  std::unique_ptr<Frame> frame;
  {
    std::lock_guard<std::mutex> lk(frame_pool_mu_);
    if (!frame_pool_.empty()) {
      frame = std::move(frame_pool_.back());
      frame_pool_.pop_back();
    }
  }
  if (!frame) frame = std::make_unique<Frame>();
  frame->worker = worker;
  frame->records.reserve(256);
  uint64_t bytes = 0;
  const unsigned start = next_stripe_.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < kStripes && bytes < options_.frame_bytes && frame->records.size() < kMaxFrameRecords; ++i) {
    Stripe& s = stripes_[(start + i) % kStripes];
    std::lock_guard<std::mutex> lk(s.mu);
    while (s.head < s.records.size() && bytes < options_.frame_bytes && frame->records.size() < kMaxFrameRecords) {
      Record& r = s.records[s.head];
      if (!frame->records.empty() && bytes + r.size > options_.frame_bytes) break;
      bytes += r.size;
      frame->records.push_back(std::move(r));
      ++s.head;
    }
    if (s.head == s.records.size()) {
      s.records.clear();  // keeps the capacity for the next step
      s.head = 0;
    } else if (s.head >= 1024 && 2 * s.head >= s.records.size()) {
      s.records.erase(s.records.begin(), s.records.begin() + static_cast<std::ptrdiff_t>(s.head));
      s.head = 0;
    }
  }
  pending_records_.fetch_sub(frame->records.size(), std::memory_order_acq_rel);
  pending_bytes_.fetch_sub(bytes, std::memory_order_acq_rel);
  if (frame->records.empty()) return nullptr;
  return frame;
}

// Pass 1, no locks held: run deferred encoders and hash every payload.
void Engine::EncodeAndHash(Frame* frame, FrameScratch* scratch) {
  FrameCtx& ctx = scratch->ctx;
  ctx.memo.Clear();
  ctx.uniques.clear();
  scratch->copied.Clear();
  const uint64_t frame_id = g_frame_ids.fetch_add(1, std::memory_order_relaxed);
  std::vector<Prepared>& prepared = scratch->prepared;
  if (prepared.size() < frame->records.size()) prepared.resize(frame->records.size());
  for (size_t i = 0; i < frame->records.size(); ++i) {
    Record& r = frame->records[i];
    Prepared& p = prepared[i];
    p.Reset();
    frame->charge += r.charge;
    if (r.encode != nullptr) {
      SinkImpl impl{&p, &ctx};
      tfdump_encode_sink sink{&impl, &SinkAppend, &SinkAddBlob, &SinkHash, frame_id};
      const int rc = r.encode(r.owner, &sink);
      if (rc != TFDUMP_ENCODE_OK) {
        p.failed = true;
        const int reason = rc == TFDUMP_ENCODE_MUTED ? kDropReasonMuted : kInternal;
        std::vector<LateDrop>& late = frame->encode_failures;
        if (!late.empty() && late.back().run_id == r.run_id && late.back().reason == reason) {
          late.back().tensors += 1;  // one event per run and frame, not per muted summary
          late.back().bytes += r.size;
        } else {
          late.push_back(LateDrop{r.run_id, 1, r.size, reason});
        }
        continue;
      }
      p.main = reinterpret_cast<const uint8_t*>(p.encoded.data());
      p.main_len = p.encoded.size();
      if (p.main_len > 0) p.main_hash = HashBytes(p.main, p.main_len);
    } else {
      p.main = r.data;
      p.main_len = r.size;
      if (p.main_len == 0) continue;
      if (r.aliased) {
        // Same address, same bytes: an earlier record of this frame, or one
        // of an earlier frame (then hashed here once).
        auto slot = scratch->copied.TryEmplace(PtrKey{p.main, p.main_len}, Hash128{0, 0});
        if (slot.second) *slot.first = HashBytes(p.main, p.main_len);
        p.main_hash = *slot.first;
      } else {
        p.main_hash = HashBytes(p.main, p.main_len);
        if (r.owner != nullptr && r.encode == nullptr && p.main_len >= kMinAliasedPayload) {
          scratch->copied.TryEmplace(PtrKey{p.main, p.main_len}, p.main_hash);
        }
      }
    }
  }
}

// Pass 2: one lock to learn which payloads earlier frames already hold
// (each distinct payload looked up once, however often it is referred to).
void Engine::FindCommittedPayloads(const Frame* frame, FrameScratch* scratch) {
  FlatSet<Hash128, Hash128Hasher>& frame_hashes = scratch->frame_hashes;
  frame_hashes.Clear();
  std::lock_guard<std::mutex> lk(dedup_mu_);
  for (size_t i = 0; i < frame->records.size(); ++i) {
    const Prepared& p = scratch->prepared[i];
    if (!p.failed && p.main_len > 0 && committed_.Contains(p.main_hash)) frame_hashes.Insert(p.main_hash);
  }
  for (UniqueBlob& u : scratch->ctx.uniques) {
    if (committed_.Contains(u.hash)) {
      frame_hashes.Insert(u.hash);
      u.handled = true;
      st_deduped_.fetch_add(u.size, std::memory_order_relaxed);
    }
  }
}

// Pass 3: lay out the table and the data block.
void Engine::LayOutRecords(Frame* frame, FrameScratch* scratch) {
  std::vector<UniqueBlob>& uniques = scratch->ctx.uniques;
  FlatSet<Hash128, Hash128Hasher>* frame_hashes = &scratch->frame_hashes;
  std::vector<bool>& emitted = emitted_keys_[frame->worker];
  std::vector<Hash128> blob_hashes;
  for (size_t i = 0; i < frame->records.size(); ++i) {
    Record& r = frame->records[i];
    Prepared& p = scratch->prepared[i];
    if (p.failed) continue;
    if (r.key_id >= emitted.size()) emitted.resize(r.key_id + 1, false);
    if (!emitted[r.key_id]) EmitKeyDef(frame, r.key_id, &emitted);
    const bool numeric = (r.flags & kNonNumericFlags) == 0;
    if (p.main_len > 0) StoreBlob(frame, p.main_hash, p.main, p.main_len, r.elem_size, numeric, frame_hashes);
    blob_hashes.clear();
    uint64_t deduped = 0;
    for (const BlobRef& b : p.blobs) {
      UniqueBlob& u = uniques[b.unique];
      if (!u.handled) {
        StoreBlob(frame, u.hash, u.data, u.size, u.elem_size, true, frame_hashes);
        u.handled = true;
      } else {
        deduped += u.size;
      }
      blob_hashes.push_back(b.hash);
    }
    st_deduped_.fetch_add(deduped, std::memory_order_relaxed);
    frame->table.Tensor(r.run_id, r.seq, r.wall_us, r.key_id, r.dtype, static_cast<uint16_t>(r.flags),
                        r.dims(), r.ndims, p.main_hash, p.main_len, blob_hashes.data(),
                        static_cast<uint32_t>(blob_hashes.size()));
    ++frame->n_tensors;
  }
}

// The KEY_DEF of `key_id`, the first time this worker's shard needs it.
void Engine::EmitKeyDef(Frame* frame, uint32_t key_id, std::vector<bool>* emitted) {
  std::shared_lock<std::shared_mutex> lk(keys_mu_);
  if (key_id < keys_.size()) {
    const KeyInfo& k = keys_[key_id];
    frame->table.KeyDef(key_id, k.slot, k.device, k.node, k.debug_op);
    (*emitted)[key_id] = true;
  }
}

void Engine::CommitFrame(std::unique_ptr<Frame> frame, int status) {
  if (status == kOk) {
    std::lock_guard<std::mutex> lk(dedup_mu_);
    // Bounded memory: past the cap, start over (costs duplicates, never data).
    if (committed_.size() + frame->new_hashes.size() > options_.dedup_max_entries) committed_.Clear();
    for (const auto& nh : frame->new_hashes) {
      // Tiny payloads cost less to store again than to index (~64 B an entry).
      if (nh.second >= kMinIndexedPayload) committed_.Insert(nh.first);
    }
    st_written_.fetch_add(frame->n_tensors, std::memory_order_relaxed);
    st_frames_.fetch_add(1, std::memory_order_relaxed);
  } else {
    // The frame never reached the disk: its key definitions must be written
    // again, and its tensors are lost and counted per run.
    emitted_keys_[frame->worker].clear();
    std::unordered_map<uint32_t, LateDrop> per_run;
    for (const Record& r : frame->records) {
      LateDrop& d = per_run[r.run_id];
      d.run_id = r.run_id;
      d.tensors += 1;
      d.bytes += r.size;
      d.reason = status;
    }
    std::lock_guard<std::mutex> lk(late_mu_);
    for (auto& kv : per_run) {
      late_drops_.push_back(kv.second);
      st_dropped_.fetch_add(kv.second.tensors, std::memory_order_relaxed);
      st_dropped_bytes_.fetch_add(kv.second.bytes, std::memory_order_relaxed);
    }
  }
  if (!frame->encode_failures.empty()) {
    std::lock_guard<std::mutex> lk(late_mu_);
    for (const LateDrop& d : frame->encode_failures) {
      late_drops_.push_back(d);
      if (d.reason == kDropReasonMuted) continue;  // left out on purpose, not lost
      st_dropped_.fetch_add(d.tensors, std::memory_order_relaxed);
      st_dropped_bytes_.fetch_add(d.bytes, std::memory_order_relaxed);
    }
  }
  // Settled per run (written, or lost and counted above): one atomic add
  // per run of consecutive records, after the frame reached the disk.
  uint32_t settled_run = 0;
  uint64_t settled = 0;
  for (const Record& r : frame->records) {
    if (r.run_id != settled_run) {
      CountCommitted(settled_run, settled);
      settled_run = r.run_id;
      settled = 0;
    }
    ++settled;
  }
  CountCommitted(settled_run, settled);
  ReleaseRecords(frame->records.data(), frame->records.size());
  ReleaseBudget(frame->charge);
  const uint64_t n = frame->records.size();
  // Reused with its buffers, unless a large tensor made them large: idle
  // frames must not hold more than a couple of ordinary frames' memory.
  if (frame->data.capacity() <= 2 * options_.frame_bytes) {
    frame->Reset();
    std::lock_guard<std::mutex> lk(frame_pool_mu_);
    if (frame_pool_.size() < static_cast<size_t>(2 * options_.workers)) frame_pool_.push_back(std::move(frame));
  }
  if (outstanding_.fetch_sub(n, std::memory_order_acq_rel) == n) {
    std::lock_guard<std::mutex> lk(idle_mu_);
    idle_cv_.notify_all();
  }
}

}  // namespace tfdump
