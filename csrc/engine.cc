#include "engine.h"

#include <time.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "status.h"

namespace tfdump {
namespace {

constexpr size_t kChunkBytes = 1u << 20;       // per-stripe copy buffer
constexpr size_t kMaxChunkedCopy = 256u << 10;  // larger copies get their own block
constexpr size_t kChunkPoolMax = 32;            // spare copy buffers kept (32 MiB at most)
constexpr size_t kMaxFrameRecords = 16384;     // bounds a frame's bookkeeping when tensors are tiny
constexpr size_t kMinIndexedPayload = 64;       // smaller payloads are deduplicated within a frame only

int64_t NowUs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// Each producer thread sticks to one stripe, so its records keep their order
// within the stripe and threads rarely share a lock.
unsigned ThreadStripe() {
  static std::atomic<unsigned> next{0};
  thread_local unsigned mine = next.fetch_add(1);
  return mine;
}

void FreeBlock(void* p) { std::free(p); }

uint32_t ApiInternKey(void* e, const char* device, size_t device_len, const char* node, size_t node_len,
                      int32_t slot, const char* op, size_t op_len) {
  return static_cast<Engine*>(e)->InternKey(device, device_len, node, node_len, slot, op, op_len);
}
int ApiSubmit(void* e, const tfdump_tensor_in* in) { return static_cast<Engine*>(e)->Submit(*in); }

constexpr uint32_t kNonNumericFlags = TFDUMP_FLAG_STRING | TFDUMP_FLAG_VARIANT | TFDUMP_FLAG_RESOURCE;

}  // namespace

// A reference-counted copy buffer: records copied into it hold one reference
// each, the stripe holds one while the chunk is current. Released chunks go
// back to the engine's pool instead of to malloc: a fresh 1 MiB block is a
// fresh mmap, and its page faults cost more than the copies themselves.
struct Engine::Chunk {
  std::atomic<int> refs{1};
  size_t cap = 0, used = 0;
  Engine* engine = nullptr;
  uint8_t* bytes() { return reinterpret_cast<uint8_t*>(this + 1); }
  static Chunk* New(Engine* engine, size_t cap) {
    {
      std::lock_guard<std::mutex> lk(engine->chunk_pool_mu_);
      if (!engine->chunk_pool_.empty()) {
        Chunk* c = engine->chunk_pool_.back();
        engine->chunk_pool_.pop_back();
        c->refs.store(1, std::memory_order_relaxed);
        c->used = 0;
        return c;
      }
    }
    void* mem = std::malloc(sizeof(Chunk) + cap);
    if (mem == nullptr) return nullptr;
    Chunk* c = new (mem) Chunk;
    c->cap = cap;
    c->engine = engine;
    return c;
  }
  static void Release(void* p) {
    Chunk* c = static_cast<Chunk*>(p);
    if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    Engine* e = c->engine;
    {
      std::lock_guard<std::mutex> lk(e->chunk_pool_mu_);
      if (e->chunk_pool_.size() < kChunkPoolMax) {
        e->chunk_pool_.push_back(c);
        return;
      }
    }
    Destroy(c);
  }
  static void Destroy(Chunk* c) {
    c->~Chunk();
    std::free(c);
  }
};

Engine::Engine(const EngineOptions& options) : options_(options) {
  if (options_.workers < 1) options_.workers = 1;
  if (options_.frame_bytes < 4096) options_.frame_bytes = 4096;
  api_.api_version = TFDUMP_ENGINE_API_VERSION;
  api_.engine = this;
  api_.intern_key = &ApiInternKey;
  api_.submit = &ApiSubmit;
  api_.zero_copy_threshold = options_.zero_copy_threshold;
  emitted_keys_.resize(options_.workers);
}

Engine::~Engine() {
  for (Stripe& s : stripes_) {
    std::lock_guard<std::mutex> lk(s.mu);
    for (size_t i = s.head; i < s.records.size(); ++i) ReleaseRecord(s.records[i]);
    s.records.clear();
    s.head = 0;
    if (s.chunk != nullptr) Chunk::Release(s.chunk);
    s.chunk = nullptr;
  }
  // Every record is released by now (workers committed their frames, the
  // stripes were drained above), so every chunk is back in the pool.
  std::lock_guard<std::mutex> lk(chunk_pool_mu_);
  for (Chunk* c : chunk_pool_) Chunk::Destroy(c);
  chunk_pool_.clear();
}

uint32_t Engine::InternKey(const char* device, size_t device_len, const char* node, size_t node_len, int32_t slot,
                           const char* debug_op, size_t debug_op_len) {
  std::string composite;
  composite.reserve(device_len + node_len + debug_op_len + 16);
  composite.append(device, device_len).push_back('\0');
  composite.append(node, node_len).push_back('\0');
  composite.append(debug_op, debug_op_len).push_back('\0');
  composite.append(std::to_string(slot));
  {
    std::shared_lock<std::shared_mutex> lk(keys_mu_);
    auto it = key_ids_.find(composite);
    if (it != key_ids_.end()) return it->second;
  }
  std::unique_lock<std::shared_mutex> lk(keys_mu_);
  auto it = key_ids_.find(composite);
  if (it != key_ids_.end()) return it->second;
  const uint32_t id = static_cast<uint32_t>(keys_.size());
  keys_.push_back(KeyInfo{slot, std::string(device, device_len), std::string(node, node_len),
                          std::string(debug_op, debug_op_len)});
  key_ids_.emplace(std::move(composite), id);
  return id;
}

void Engine::BeginRun(uint32_t run_id) {
  // Deferral assumes the gaps between runs are long enough for the writer.
  // When work of earlier runs is still waiting as this run starts, for
  // kBackloggedStartsBeforeOverlap starts in a row, they are not: back to
  // back steps would otherwise run and write in turn instead of at once
  // (measured on the rnn loop: 33 ms/step deferring vs 29 ms overlapping).
  // The first start that finds the writer idle turns deferral back on.
  if (pending_records_.load() > 0) {
    if (backlogged_starts_.fetch_add(1) + 1 >= kBackloggedStartsBeforeOverlap) overlap_runs_.store(true);
  } else {
    backlogged_starts_.store(0);
    overlap_runs_.store(false);
  }
  RunState& run = runs_[run_id % kRunRing];
  if (!run.open.exchange(false, std::memory_order_acq_rel)) open_runs_.fetch_add(1);
  run.seq = 0;
  run.tensors = 0;
  run.bytes = 0;
  run.dropped_tensors = 0;
  run.dropped_bytes = 0;
  run.run_id.store(run_id, std::memory_order_release);
  run.open.store(true, std::memory_order_release);
}

RunCounters Engine::EndRun(uint32_t run_id) {
  RunState& run = runs_[run_id % kRunRing];
  RunCounters c;
  if (run.run_id.load() != run_id) return c;
  if (run.open.exchange(false, std::memory_order_acq_rel)) open_runs_.fetch_sub(1);
  c.tensors = run.tensors.load();
  c.bytes = run.bytes.load();
  c.dropped_tensors = run.dropped_tensors.load();
  c.dropped_bytes = run.dropped_bytes.load();
  Kick();  // the run's last partial frame goes out now
  return c;
}

bool Engine::ReserveBudget(uint64_t charge) {
  uint64_t cur = queued_bytes_.load(std::memory_order_relaxed);
  for (;;) {
    // An empty queue always admits one record, however large: TF already
    // holds that memory, and refusing it could only deadlock.
    if (cur == 0 || cur + charge <= options_.queue_bytes) {
      if (queued_bytes_.compare_exchange_weak(cur, cur + charge, std::memory_order_acq_rel)) {
        const uint64_t half = options_.queue_bytes / 2;
        if (options_.defer_during_runs && cur < half && cur + charge >= half) Kick();  // deferral ends
        uint64_t hw = high_water_.load(std::memory_order_relaxed);
        while (cur + charge > hw && !high_water_.compare_exchange_weak(hw, cur + charge)) {
        }
        return true;
      }
      continue;
    }
    if (options_.policy == Backpressure::kDrop || shutdown_.load() || error_.load() != kOk) return false;
    // Count ourselves as waiting, then wake the workers: they may be
    // waiting for a full frame that the records holding the budget will
    // never make, and they test budget_waiters_ to take partial frames.
    budget_waiters_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lk(work_mu_);
      work_cv_.notify_all();
    }
    {
      std::unique_lock<std::mutex> lk(budget_mu_);
      // Bounded waits: a lost wake-up can only cost 20 ms, never a hang.
      budget_cv_.wait_for(lk, std::chrono::milliseconds(20), [&] {
        const uint64_t q = queued_bytes_.load();
        return q == 0 || q + charge <= options_.queue_bytes || shutdown_.load() || error_.load() != kOk;
      });
      budget_waiters_.fetch_sub(1);
    }
    cur = queued_bytes_.load(std::memory_order_relaxed);
  }
}

void Engine::ReleaseBudget(uint64_t charge) {
  queued_bytes_.fetch_sub(charge, std::memory_order_acq_rel);
  if (budget_waiters_.load() > 0) {
    std::lock_guard<std::mutex> lk(budget_mu_);
    budget_cv_.notify_all();
  }
}

void Engine::CountDrop(RunState* run, uint64_t bytes) {
  if (run != nullptr) {
    run->dropped_tensors.fetch_add(1, std::memory_order_relaxed);
    run->dropped_bytes.fetch_add(bytes, std::memory_order_relaxed);
  }
  st_dropped_.fetch_add(1, std::memory_order_relaxed);
  st_dropped_bytes_.fetch_add(bytes, std::memory_order_relaxed);
}

void Engine::ReleaseRecord(Record& r) {
  if (r.release != nullptr && r.owner != nullptr) r.release(r.owner);
  r.release = nullptr;
  r.owner = nullptr;
}

int Engine::Submit(const tfdump_tensor_in& in) {
  RunState& run = runs_[in.run_id % kRunRing];
  const int64_t arrival_us = in.wall_us != 0 ? in.wall_us : NowUs();
  auto release_input = [&] {
    if (in.owner != nullptr && in.release != nullptr) in.release(in.owner);
  };
  if (!run.open.load(std::memory_order_acquire) || run.run_id.load(std::memory_order_acquire) != in.run_id) {
    release_input();
    return TFDUMP_SUBMIT_BAD_RUN;
  }
  // The sequence number is taken on arrival, before any backpressure wait, so
  // it is the exact order in which the debug ops handed tensors over.
  const uint64_t seq = run.seq.fetch_add(1, std::memory_order_relaxed);
  // The bookkeeping of a record counts too, so a flood of scalars cannot
  // hold many times the budget in Record structs.
  const uint64_t charge = (in.charge_bytes != 0 ? in.charge_bytes : in.size) + sizeof(Record) +
                          sizeof(int64_t) * static_cast<uint64_t>(in.ndims > 0 ? in.ndims : 0);

  if (options_.discard) {
    run.tensors.fetch_add(1, std::memory_order_relaxed);
    run.bytes.fetch_add(in.size, std::memory_order_relaxed);
    st_tensors_.fetch_add(1, std::memory_order_relaxed);
    st_bytes_.fetch_add(in.size, std::memory_order_relaxed);
    release_input();
    return TFDUMP_SUBMIT_OK;
  }
  if (shutdown_.load() || error_.load() != kOk || !ReserveBudget(charge)) {
    CountDrop(&run, in.size);
    release_input();
    return TFDUMP_SUBMIT_DROPPED;
  }

  Record r;
  r.run_id = in.run_id;
  r.key_id = in.key_id;
  r.seq = seq;
  r.wall_us = arrival_us;
  r.dtype = in.dtype;
  r.flags = in.flags;
  r.elem_size = in.elem_size;
  r.ndims = (in.ndims > 0 && in.dims != nullptr) ? in.ndims : 0;
  if (r.ndims <= Record::kInlineDims) {
    for (int d = 0; d < r.ndims; ++d) r.inline_dims[d] = in.dims[d];
  } else {
    r.heap_dims.assign(in.dims, in.dims + in.ndims);
  }
  r.size = in.size;
  r.encode = in.encode;
  r.charge = charge;
  r.owner = in.owner;
  r.release = in.release;
  r.data = static_cast<const uint8_t*>(in.data);

  Stripe& stripe = stripes_[ThreadStripe() % kStripes];
  const bool copy = in.owner == nullptr && in.encode == nullptr && in.size > 0;
  if (copy && in.size > kMaxChunkedCopy) {
    void* block = std::malloc(in.size);
    if (block == nullptr) {
      ReleaseBudget(charge);
      CountDrop(&run, in.size);
      return TFDUMP_SUBMIT_DROPPED;
    }
    std::memcpy(block, in.data, in.size);
    r.data = static_cast<const uint8_t*>(block);
    r.owner = block;
    r.release = &FreeBlock;
  }
  {
    std::lock_guard<std::mutex> lk(stripe.mu);
    if (copy && in.size <= kMaxChunkedCopy) {
      if (stripe.chunk == nullptr || stripe.chunk->used + in.size > stripe.chunk->cap) {
        if (stripe.chunk != nullptr) Chunk::Release(stripe.chunk);
        stripe.chunk = Chunk::New(this, kChunkBytes);
        if (stripe.chunk == nullptr) {
          ReleaseBudget(charge);
          CountDrop(&run, in.size);
          return TFDUMP_SUBMIT_DROPPED;
        }
      }
      Chunk* c = stripe.chunk;
      uint8_t* dst = c->bytes() + c->used;
      std::memcpy(dst, in.data, in.size);
      c->used += (in.size + 7) & ~size_t(7);
      c->refs.fetch_add(1, std::memory_order_relaxed);
      r.data = dst;
      r.owner = c;
      r.release = &Chunk::Release;
    }
    stripe.records.push_back(std::move(r));
  }
  run.tensors.fetch_add(1, std::memory_order_relaxed);
  run.bytes.fetch_add(in.size, std::memory_order_relaxed);
  st_tensors_.fetch_add(1, std::memory_order_relaxed);
  st_bytes_.fetch_add(in.size, std::memory_order_relaxed);
  outstanding_.fetch_add(1, std::memory_order_acq_rel);
  pending_records_.fetch_add(1, std::memory_order_acq_rel);
  const uint64_t pending = pending_bytes_.fetch_add(in.size, std::memory_order_acq_rel) + in.size;
  // Wake a worker only when a full frame is waiting: a notify per tensor
  // would be a futex call per tensor.
  if (pending >= options_.frame_bytes && pending - in.size < options_.frame_bytes && idle_workers_.load() > 0) {
    std::lock_guard<std::mutex> lk(work_mu_);
    work_cv_.notify_one();
  }
  return TFDUMP_SUBMIT_OK;
}

void Engine::Kick() {
  kicks_.fetch_add(1, std::memory_order_acq_rel);
  std::lock_guard<std::mutex> lk(work_mu_);
  work_cv_.notify_all();
}

namespace {

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
  if (Deferring()) return nullptr;  // timed out while a run executes: keep waiting
  seen_kicks = kicks_.load();
  if (pending_records_.load() == 0) {
    if (shutdown_.load() && outstanding_.load() == 0) *finished = true;
    return nullptr;
  }

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

  // Pass 1, no locks held: run deferred encoders and hash every payload.
  // The per-record scratch is this worker's, reused frame after frame.
  thread_local FrameCtx ctx;
  ctx.memo.Clear();
  ctx.uniques.clear();
  std::vector<UniqueBlob>& uniques = ctx.uniques;
  const uint64_t frame_id = g_frame_ids.fetch_add(1, std::memory_order_relaxed);
  thread_local std::vector<Prepared> prepared;
  if (prepared.size() < frame->records.size()) prepared.resize(frame->records.size());
  for (size_t i = 0; i < frame->records.size(); ++i) {
    Record& r = frame->records[i];
    Prepared& p = prepared[i];
    p.Reset();
    frame->charge += r.charge;
    if (r.encode != nullptr) {
      SinkImpl impl{&p, &ctx};
      tfdump_encode_sink sink{&impl, &SinkAppend, &SinkAddBlob, &SinkHash, frame_id};
      if (r.encode(r.owner, &sink) != 0) {
        p.failed = true;
        frame->encode_failures.push_back(LateDrop{r.run_id, 1, r.size, kInternal});
        continue;
      }
      p.main = reinterpret_cast<const uint8_t*>(p.encoded.data());
      p.main_len = p.encoded.size();
    } else {
      p.main = r.data;
      p.main_len = r.size;
    }
    if (p.main_len > 0) p.main_hash = HashBytes(p.main, p.main_len);
  }

  // Pass 2: one lock to learn which payloads earlier frames already hold
  // (each distinct payload looked up once, however often it is referred to).
  thread_local FlatSet<Hash128, Hash128Hasher> frame_hashes;
  frame_hashes.Clear();
  {
    std::lock_guard<std::mutex> lk(dedup_mu_);
    for (size_t i = 0; i < frame->records.size(); ++i) {
      const Prepared& p = prepared[i];
      if (!p.failed && p.main_len > 0 && committed_.Contains(p.main_hash)) frame_hashes.Insert(p.main_hash);
    }
    for (UniqueBlob& u : uniques) {
      if (committed_.Contains(u.hash)) {
        frame_hashes.Insert(u.hash);
        u.handled = true;
        st_deduped_.fetch_add(u.size, std::memory_order_relaxed);
      }
    }
  }

  // Pass 3: lay out the table and the data block.
  std::vector<bool>& emitted = emitted_keys_[worker];
  std::vector<Hash128> blob_hashes;
  for (size_t i = 0; i < frame->records.size(); ++i) {
    Record& r = frame->records[i];
    Prepared& p = prepared[i];
    if (p.failed) continue;
    if (r.key_id >= emitted.size()) emitted.resize(r.key_id + 1, false);
    if (!emitted[r.key_id]) {
      std::shared_lock<std::shared_mutex> lk(keys_mu_);
      if (r.key_id < keys_.size()) {
        const KeyInfo& k = keys_[r.key_id];
        frame->table.KeyDef(r.key_id, k.slot, k.device, k.node, k.debug_op);
        emitted[r.key_id] = true;
      }
    }
    const bool numeric = (r.flags & kNonNumericFlags) == 0;
    if (p.main_len > 0) StoreBlob(frame.get(), p.main_hash, p.main, p.main_len, r.elem_size, numeric, &frame_hashes);
    blob_hashes.clear();
    uint64_t deduped = 0;
    for (const BlobRef& b : p.blobs) {
      UniqueBlob& u = uniques[b.unique];
      if (!u.handled) {
        StoreBlob(frame.get(), u.hash, u.data, u.size, u.elem_size, true, &frame_hashes);
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
  return frame;
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
      st_dropped_.fetch_add(d.tensors, std::memory_order_relaxed);
      st_dropped_bytes_.fetch_add(d.bytes, std::memory_order_relaxed);
    }
  }
  for (Record& r : frame->records) ReleaseRecord(r);
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

bool Engine::Deferring() const {
  return options_.defer_during_runs && open_runs_.load() > 0 && !overlap_runs_.load() && flushing_.load() == 0 &&
         !shutdown_.load() &&
         budget_waiters_.load() == 0 && error_.load() == kOk && queued_bytes_.load() < options_.queue_bytes / 2;
}

bool Engine::WaitIdle(int timeout_ms) {
  flushing_.fetch_add(1);
  Kick();
  bool idle;
  {
    std::unique_lock<std::mutex> lk(idle_mu_);
    idle = idle_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return outstanding_.load() == 0; });
  }
  flushing_.fetch_sub(1);
  return idle;
}

void Engine::Shutdown() {
  shutdown_.store(true);
  Kick();
  std::lock_guard<std::mutex> lk(budget_mu_);
  budget_cv_.notify_all();
}

void Engine::SetError(int code) {
  int expected = kOk;
  error_.compare_exchange_strong(expected, code);
  std::lock_guard<std::mutex> lk(budget_mu_);
  budget_cv_.notify_all();
}

EngineStats Engine::Stats() const {
  EngineStats s;
  s.tensors_accepted = st_tensors_.load();
  s.bytes_accepted = st_bytes_.load();
  s.tensors_dropped = st_dropped_.load();
  s.bytes_dropped = st_dropped_bytes_.load();
  s.tensors_written = st_written_.load();
  s.payload_bytes_stored = st_stored_.load();
  s.payload_bytes_deduped = st_deduped_.load();
  s.frames = st_frames_.load();
  s.queued_bytes = queued_bytes_.load();
  s.queue_high_water = high_water_.load();
  s.records_outstanding = outstanding_.load();
  return s;
}

std::vector<LateDrop> Engine::TakeLateDrops() {
  std::lock_guard<std::mutex> lk(late_mu_);
  std::vector<LateDrop> out;
  out.swap(late_drops_);
  return out;
}

}  // namespace tfdump
