// The producer side of the engine and its lifecycle: key interning, runs,
// the queue's byte budget (backpressure), Submit (any thread), flush and
// shutdown, statistics. The worker side is in engine_frames.cc.

#include "engine.h"

#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#endif

#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include "status.h"

namespace tfdump {
namespace {

constexpr size_t kChunkBytes = 1u << 20;       // per-stripe copy buffer
constexpr size_t kMaxChunkedCopy = 256u << 10;  // larger copies get their own block
constexpr size_t kChunkPoolMax = 32;            // spare copy buffers kept (32 MiB at most)

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

// Whether `n` bytes of IEEE values hold an inf or nan: all exponent bits set.
// Branch-free over the whole buffer so the compiler vectorizes it; a tensor
// is scanned only until its run's first hit (then the run is released).
template <typename U>
bool AnyExponentAllOnes(const uint8_t* data, size_t n, U mask) {
  const size_t count = n / sizeof(U);
  U hit = 0;
  for (size_t i = 0; i < count; ++i) {
    U v;
    std::memcpy(&v, data + i * sizeof(U), sizeof(U));
    hit |= static_cast<U>((v & mask) == mask);
  }
  return hit != 0;
}

// TF DataType values (types.proto) of the floating-point dtypes.
constexpr int32_t kDtFloat = 1, kDtDouble = 2, kDtComplex64 = 8, kDtBfloat16 = 14, kDtComplex128 = 18,
                  kDtHalf = 19;

bool HasNonfinite(int32_t dtype, const uint8_t* data, size_t n) {
  if (data == nullptr || n == 0) return false;
  switch (dtype) {
    case kDtFloat:
    case kDtComplex64:
      return AnyExponentAllOnes<uint32_t>(data, n, 0x7f800000u);
    case kDtDouble:
    case kDtComplex128:
      return AnyExponentAllOnes<uint64_t>(data, n, 0x7ff0000000000000ull);
    case kDtHalf:
      return AnyExponentAllOnes<uint16_t>(data, n, 0x7c00u);
    case kDtBfloat16:
      return AnyExponentAllOnes<uint16_t>(data, n, 0x7f80u);
    default:
      return false;
  }
}

// Kernel scheduling of one thread (Linux; elsewhere a no-op that fails).
long CurrentTid() {
#ifdef __linux__
  return static_cast<long>(syscall(SYS_gettid));
#else
  return 0;
#endif
}

bool SetThreadClass(long tid, int policy, int nice) {
#ifdef __linux__
  // Nice first, then the class: leaving SCHED_IDLE is checked against the
  // nice the thread has then (sched(7)).
  bool ok = setpriority(PRIO_PROCESS, static_cast<id_t>(tid), nice) == 0;
  sched_param sp{};
  sp.sched_priority = 0;
  ok = sched_setscheduler(static_cast<pid_t>(tid), policy, &sp) == 0 && ok;
  return ok;
#else
  (void)tid, (void)policy, (void)nice;
  return false;
#endif
}

int ThreadNice(long tid) {
#ifdef __linux__
  errno = 0;
  const int n = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  return errno == 0 ? n : 0;
#else
  (void)tid;
  return 0;
#endif
}

// Whether a thread of this process may enter (policy, nice) and come back to
// SCHED_OTHER at `base_nice`: tried on a throwaway thread, so the answer
// follows whatever rules the kernel applies (capabilities, RLIMIT_NICE).
bool BackgroundIsReversible(int policy, int nice, int base_nice) {
#ifdef __linux__
  bool reversible = false;
  try {
    std::thread probe([&] {
      const long tid = CurrentTid();
      if (!SetThreadClass(tid, policy, nice)) return;
      reversible = SetThreadClass(tid, SCHED_OTHER, base_nice);
    });
    probe.join();
  } catch (...) {  // no thread: keep the normal class
    return false;
  }
  return reversible;
#else
  (void)policy, (void)nice, (void)base_nice;
  return false;
#endif
}

uint32_t ApiInternKey(void* e, const char* device, size_t device_len, const char* node, size_t node_len,
                      int32_t slot, const char* op, size_t op_len) {
  return static_cast<Engine*>(e)->InternKey(device, device_len, node, node_len, slot, op, op_len);
}
int ApiSubmit(void* e, const tfdump_tensor_in* in) { return static_cast<Engine*>(e)->Submit(*in); }

}  // namespace

// A reference-counted copy buffer: records copied into it hold one reference
// each, the stripe holds one while the chunk is current. Released chunks go
// back to the engine's pool instead of to malloc: a fresh 1 MiB block is a
// fresh mmap, and its page faults cost more than the copies themselves.
struct Engine::Chunk {
  // A new chunk holds this many references: the stripe's own one plus an
  // advance it hands to records without atomics (Stripe::chunk_refs_handed).
  static constexpr int kRefAdvance = 1 << 30;
  std::atomic<int> refs{kRefAdvance};
  size_t cap = 0, used = 0;
  Engine* engine = nullptr;
  uint8_t* bytes() { return reinterpret_cast<uint8_t*>(this + 1); }
  static Chunk* New(Engine* engine, size_t cap) {
    {
      std::lock_guard<std::mutex> lk(engine->chunk_pool_mu_);
      if (!engine->chunk_pool_.empty()) {
        Chunk* c = engine->chunk_pool_.back();
        engine->chunk_pool_.pop_back();
        c->refs.store(kRefAdvance, std::memory_order_relaxed);
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
  static void Release(void* p) { ReleaseN(static_cast<Chunk*>(p), 1); }
  static void ReleaseN(Chunk* c, int n) {
    if (c->refs.fetch_sub(n, std::memory_order_acq_rel) != n) return;
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

// The stripe lets go of its current chunk: the references it did not hand
// out are given back (the chunk returns to the pool once its records are
// released), and the remembered copies pointed into it.
void Engine::RetireChunk(Stripe& s) {
  if (s.chunk != nullptr) Chunk::ReleaseN(s.chunk, Chunk::kRefAdvance - s.chunk_refs_handed);
  s.chunk = nullptr;
  s.chunk_refs_handed = 0;
  for (RecentCopy& rc : s.recent) rc = RecentCopy{};
}

void Engine::ReleaseRecords(Record* records, size_t n) {
  size_t i = 0;
  while (i < n) {
    Record& r = records[i];
    if (r.release == &Chunk::Release && r.owner != nullptr) {
      size_t j = i + 1;
      while (j < n && records[j].owner == r.owner && records[j].release == &Chunk::Release) {
        records[j].owner = nullptr;
        records[j].release = nullptr;
        ++j;
      }
      Chunk* c = static_cast<Chunk*>(r.owner);
      r.owner = nullptr;
      r.release = nullptr;
      Chunk::ReleaseN(c, static_cast<int>(j - i));
      i = j;
    } else {
      ReleaseRecord(r);
      ++i;
    }
  }
}

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
  {
    std::lock_guard<std::mutex> lk(flight_mu_);
    for (HeldRun& h : ring_) ReleaseRecords(h.records.data(), h.records.size());
    ring_.clear();
  }
  for (Stripe& s : stripes_) {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.head < s.records.size()) ReleaseRecords(s.records.data() + s.head, s.records.size() - s.head);
    s.records.clear();
    s.head = 0;
    if (!s.held.empty()) ReleaseRecords(s.held.data(), s.held.size());
    s.held.clear();
    RetireChunk(s);
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
  std::string op(debug_op, debug_op_len);
  // Full tensors are what the flight recorder holds: TF1's DebugIdentity and
  // TF2 capture's FULL_TENSOR records ("TfdumpCaptureV2.<context>"; its
  // summary modes append ".<MODE>" and are written as usual, like TF1's).
  static const std::string kTf2Prefix = "TfdumpCaptureV2.";
  const bool holdable = op == "DebugIdentity" ||
                        (op.compare(0, kTf2Prefix.size(), kTf2Prefix) == 0 &&
                         op.find('.', kTf2Prefix.size()) == std::string::npos);
  keys_.push_back(KeyInfo{slot, std::string(device, device_len), std::string(node, node_len), std::move(op),
                          holdable});
  if (id < kFastKeys) key_holdable_[id].store(holdable ? 1 : 2, std::memory_order_release);
  key_ids_.emplace(std::move(composite), id);
  return id;
}

void Engine::BeginRun(uint32_t run_id, bool hold) {
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
  run.committed = 0;
  run.bad_seq = ~0ull;
  run.bad_key = 0;
  run.held.store(hold && !options_.discard, std::memory_order_release);
  run.run_id.store(run_id, std::memory_order_release);
  run.open.store(true, std::memory_order_release);
}

RunCounters Engine::EndRun(uint32_t run_id, bool persist) {
  RunState& run = runs_[run_id % kRunRing];
  RunCounters c;
  if (run.run_id.load() != run_id) return c;
  if (run.open.exchange(false, std::memory_order_acq_rel)) open_runs_.fetch_sub(1);
  if (run.held.load(std::memory_order_acquire)) {
    // No submit is in flight any more (the bridge slot was released first).
    std::lock_guard<std::mutex> lk(flight_mu_);
    if (persist) {
      ReleaseRingLocked();
      ReleaseOpenRunLocked(run, run_id);
    } else {
      run.held.store(false, std::memory_order_release);
      HeldRun h;
      h.run_id = run_id;
      TakeHeldLocked(run_id, &h.records, &h.charge, &h.bytes);
      ring_.push_back(std::move(h));
      ring_size_.store(ring_.size());
      while (ring_.size() > options_.keep_last ||
             (!ring_.empty() && held_bytes_.load(std::memory_order_acquire) > options_.keep_bytes)) {
        EvictOldestLocked();
      }
    }
  }
  c.tensors = run.tensors.load();
  c.bytes = run.bytes.load();
  c.dropped_tensors = run.dropped_tensors.load();
  c.dropped_bytes = run.dropped_bytes.load();
  Kick();  // the run's last partial frame goes out now
  return c;
}

bool Engine::RunProgress(uint32_t run_id, uint64_t* accepted, uint64_t* committed) const {
  const RunState& run = runs_[run_id % kRunRing];
  if (run.run_id.load(std::memory_order_acquire) != run_id) return false;
  // Exact once the run has ended (no submit in flight: the bridge slot was
  // released); while it executes, `committed` may briefly lead `accepted`
  // (a record is queued before it is counted).
  *committed = run.committed.load(std::memory_order_acquire);
  *accepted = run.tensors.load(std::memory_order_acquire);
  return run.run_id.load(std::memory_order_acquire) == run_id;
}

void Engine::CountCommitted(uint32_t run_id, uint64_t n) {
  if (n == 0) return;
  RunState& run = runs_[run_id % kRunRing];
  if (run.run_id.load(std::memory_order_relaxed) == run_id) run.committed.fetch_add(n, std::memory_order_release);
}

// ------------------------------------------------------------ flight recorder

bool Engine::KeyHoldable(uint32_t key_id) const {
  if (key_id < kFastKeys) {
    const uint8_t v = key_holdable_[key_id].load(std::memory_order_acquire);
    if (v != 0) return v == 1;
  }
  std::shared_lock<std::shared_mutex> lk(keys_mu_);
  return key_id < keys_.size() && keys_[key_id].holdable;
}

bool Engine::KeyName(uint32_t key_id, std::string* device, std::string* node, int32_t* slot,
                     std::string* debug_op) const {
  std::shared_lock<std::shared_mutex> lk(keys_mu_);
  if (key_id >= keys_.size()) return false;
  const KeyInfo& k = keys_[key_id];
  *device = k.device;
  *node = k.node;
  *slot = k.slot;
  *debug_op = k.debug_op;
  return true;
}

bool Engine::ReserveHeld(uint64_t charge) {
  if (held_bytes_.fetch_add(charge, std::memory_order_acq_rel) + charge <= options_.keep_bytes) return true;
  {
    // Over the budget: the oldest ended runs make room (evicted on this
    // thread: rare, and only references are given back).
    std::lock_guard<std::mutex> lk(flight_mu_);
    while (!ring_.empty() && held_bytes_.load(std::memory_order_acquire) > options_.keep_bytes) {
      EvictOldestLocked();
    }
  }
  if (held_bytes_.load(std::memory_order_acquire) <= options_.keep_bytes) return true;
  // The executing held runs alone fill the budget: this record is dropped.
  held_bytes_.fetch_sub(charge, std::memory_order_acq_rel);
  st_overflow_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void Engine::EvictOldestLocked() {
  HeldRun& h = ring_.front();
  ReleaseRecords(h.records.data(), h.records.size());
  held_bytes_.fetch_sub(h.charge, std::memory_order_acq_rel);
  // Settled: nothing of the run will be written, and nothing is lost that
  // was asked for (the durability write-out never waits for it).
  CountCommitted(h.run_id, h.records.size());
  st_evicted_runs_.fetch_add(1, std::memory_order_relaxed);
  st_evicted_tensors_.fetch_add(h.records.size(), std::memory_order_relaxed);
  flight_changes_.push_back(FlightChange{h.run_id, false, h.records.size(), h.bytes});
  ring_.pop_front();
  ring_size_.store(ring_.size());
}

void Engine::TakeHeldLocked(uint32_t run_id, std::vector<Record>* out, uint64_t* charge, uint64_t* bytes) {
  for (Stripe& s : stripes_) {
    std::lock_guard<std::mutex> slk(s.mu);
    size_t keep = 0;
    for (size_t i = 0; i < s.held.size(); ++i) {
      if (s.held[i].run_id == run_id) {
        *charge += s.held[i].charge;
        *bytes += s.held[i].size;
        out->push_back(std::move(s.held[i]));
      } else {
        if (keep != i) s.held[keep] = std::move(s.held[i]);
        ++keep;
      }
    }
    s.held.resize(keep);
  }
}

void Engine::MoveHeldChargeToQueue(uint64_t charge) {
  held_bytes_.fetch_sub(charge, std::memory_order_acq_rel);
  const uint64_t cur = queued_bytes_.fetch_add(charge, std::memory_order_acq_rel) + charge;
  uint64_t hw = high_water_.load(std::memory_order_relaxed);
  while (cur > hw && !high_water_.compare_exchange_weak(hw, cur)) {
  }
}

void Engine::QueueRecords(std::vector<Record>* records, uint64_t charge, uint64_t bytes) {
  if (records->empty()) return;
  MoveHeldChargeToQueue(charge);
  const size_t n = records->size();
  outstanding_.fetch_add(n, std::memory_order_acq_rel);
  {
    Stripe& s = stripes_[ThreadStripe() % kStripes];
    std::lock_guard<std::mutex> lk(s.mu);
    for (Record& r : *records) s.records.push_back(std::move(r));
  }
  records->clear();
  pending_records_.fetch_add(n, std::memory_order_acq_rel);
  pending_bytes_.fetch_add(bytes, std::memory_order_acq_rel);
  // A trigger is written now, not after the runs that follow it: deferral
  // is suspended until a run start finds the writers idle again.
  overlap_runs_.store(true);
  Kick();
}

void Engine::ReleaseRingLocked() {
  while (!ring_.empty()) {
    HeldRun& h = ring_.front();
    QueueRecords(&h.records, h.charge, h.bytes);
    st_released_runs_.fetch_add(1, std::memory_order_relaxed);
    flight_changes_.push_back(FlightChange{h.run_id, true, 0, 0});
    ring_.pop_front();
  }
  ring_size_.store(0);
}

void Engine::ReleaseOpenRunLocked(RunState& run, uint32_t run_id) {
  // Later submits of the run see `held` false under their stripe's lock, so
  // each record is either moved here or queued by its producer.
  run.held.store(false, std::memory_order_release);
  std::vector<Record> out;
  uint64_t charge = 0, bytes = 0;
  TakeHeldLocked(run_id, &out, &charge, &bytes);
  QueueRecords(&out, charge, bytes);
  st_released_runs_.fetch_add(1, std::memory_order_relaxed);
  flight_changes_.push_back(FlightChange{run_id, true, 0, 0, true});
}

void Engine::FoundNonfinite(RunState& run, uint32_t run_id, uint32_t key_id, uint64_t seq) {
  std::lock_guard<std::mutex> lk(flight_mu_);
  if (run.run_id.load(std::memory_order_acquire) != run_id) return;
  if (seq < run.bad_seq.load(std::memory_order_relaxed)) {
    run.bad_seq.store(seq, std::memory_order_relaxed);
    run.bad_key.store(key_id, std::memory_order_relaxed);
  }
  if (!run.held.load(std::memory_order_acquire)) return;  // released already
  st_nonfinite_.fetch_add(1, std::memory_order_relaxed);
  ReleaseRingLocked();
  ReleaseOpenRunLocked(run, run_id);
}

size_t Engine::Persist() {
  std::lock_guard<std::mutex> lk(flight_mu_);
  const size_t n = ring_.size();
  ReleaseRingLocked();
  return n;
}

void Engine::EvictAll() {
  std::lock_guard<std::mutex> lk(flight_mu_);
  while (!ring_.empty()) EvictOldestLocked();
}

std::vector<FlightChange> Engine::TakeFlightChanges() {
  std::lock_guard<std::mutex> lk(flight_mu_);
  std::vector<FlightChange> out;
  out.swap(flight_changes_);
  return out;
}

bool Engine::NonfiniteOf(uint32_t run_id, uint32_t* key_id, uint64_t* seq) const {
  const RunState& run = runs_[run_id % kRunRing];
  std::lock_guard<std::mutex> lk(flight_mu_);
  if (run.run_id.load(std::memory_order_acquire) != run_id) return false;
  const uint64_t s = run.bad_seq.load(std::memory_order_relaxed);
  if (s == ~0ull) return false;
  *seq = s;
  *key_id = run.bad_key.load(std::memory_order_relaxed);
  return true;
}

bool Engine::ReserveBudget(uint64_t charge) {
  uint64_t cur = queued_bytes_.load(std::memory_order_relaxed);
  for (;;) {
    // An empty queue always admits one record, however large: TF already
    // holds that memory, and refusing it could only deadlock.
    if (cur == 0 || cur + charge <= options_.queue_bytes) {
      if (queued_bytes_.compare_exchange_weak(cur, cur + charge, std::memory_order_acq_rel)) {
        const uint64_t half = options_.queue_bytes / 2;
        if (cur < half && cur + charge >= half) {
          if (options_.defer_during_runs) Kick();  // deferral ends
          // The writers get their share from half full on, not only when
          // the queue is nearly full: a background-class writer on a busy
          // machine gets no CPU at all, and by 3/4 the codec has backed off
          // and the producers are a few steps from waiting.
          if (!boosted_.load(std::memory_order_relaxed)) BoostWorkers();
        }
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
    // Counted before the workers are raised, so none of them drops them
    // back while we wait.
    budget_waiters_.fetch_add(1);
    if (!boosted_.load(std::memory_order_relaxed)) BoostWorkers();
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
  // Flight recorder: a full tensor of a held run is kept back, charged to
  // keep_bytes instead of the queue (no backpressure: the ring evicts).
  const bool hold = run.held.load(std::memory_order_acquire) && KeyHoldable(in.key_id);
  if (shutdown_.load() || error_.load() != kOk || !(hold ? ReserveHeld(charge) : ReserveBudget(charge))) {
    CountDrop(&run, in.size);
    release_input();
    return TFDUMP_SUBMIT_DROPPED;
  }
  auto release_charge = [&](uint64_t c) {
    if (hold) {
      held_bytes_.fetch_sub(c, std::memory_order_acq_rel);
    } else {
      ReleaseBudget(c);
    }
  };
  // Scanned before the record is handed over: once it is, a trigger on
  // another thread may queue it and a writer release its memory. Only
  // until the run's first hit (then the run is no longer held).
  const bool nonfinite = hold && options_.persist_on_nonfinite && in.encode == nullptr &&
                         (in.flags & (kFlagString | kFlagVariant | kFlagResource | kFlagUninitialized)) == 0 &&
                         HasNonfinite(in.dtype, static_cast<const uint8_t*>(in.data), in.size);

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
  bool queued = true;
  const bool copy = in.owner == nullptr && in.encode == nullptr && in.size > 0;
  if (copy && in.size > kMaxChunkedCopy) {
    void* block = std::malloc(in.size);
    if (block == nullptr) {
      release_charge(charge);
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
      // A pass-through op (Identity, Switch, Merge, Enter, NextIteration,
      // ...) dumps the same bytes as the op before it, usually on the same
      // thread: refer to that copy instead of copying (and later hashing)
      // the bytes again. A mismatch costs a memcmp that stops at the first
      // differing bytes.
      const uint8_t* same = nullptr;
      if (in.size >= kMinAliasedPayload && in.size < options_.zero_copy_threshold && stripe.chunk != nullptr) {
        for (const RecentCopy& rc : stripe.recent) {
          if (rc.size == in.size && std::memcmp(rc.data, in.data, in.size) == 0) {
            same = rc.data;
            break;
          }
        }
      }
      if (same != nullptr) {
        r.data = same;
        r.aliased = true;
        stripe.aliased.store(stripe.aliased.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      } else {
        if (stripe.chunk == nullptr || stripe.chunk->used + in.size > stripe.chunk->cap) {
          RetireChunk(stripe);
          stripe.chunk = Chunk::New(this, kChunkBytes);
          if (stripe.chunk == nullptr) {
            release_charge(charge);
            CountDrop(&run, in.size);
            return TFDUMP_SUBMIT_DROPPED;
          }
        }
        Chunk* c = stripe.chunk;
        uint8_t* dst = c->bytes() + c->used;
        std::memcpy(dst, in.data, in.size);
        c->used += (in.size + 7) & ~size_t(7);
        r.data = dst;
        if (in.size >= kMinAliasedPayload && in.size < options_.zero_copy_threshold) {
          stripe.recent[stripe.recent_next++ % kRecentCopies] = RecentCopy{dst, in.size};
        }
      }
      ++stripe.chunk_refs_handed;  // one of the chunk's advance references
      r.owner = stripe.chunk;
      r.release = &Chunk::Release;
      if (r.aliased) {
        // Nothing new is held: only the record's own bookkeeping counts
        // against the budget.
        const uint64_t bookkeeping = sizeof(Record) + sizeof(int64_t) * static_cast<uint64_t>(r.ndims);
        if (charge > bookkeeping) release_charge(charge - bookkeeping);
        r.charge = bookkeeping < charge ? bookkeeping : charge;
      }
    }
    if (hold && run.held.load(std::memory_order_acquire)) {
      stripe.held.push_back(std::move(r));
      queued = false;
    } else {
      if (hold) {
        // Released by a trigger since this submit began: queued after all,
        // its charge moves from the held bytes to the queue's.
        MoveHeldChargeToQueue(r.charge);
      }
      stripe.records.push_back(std::move(r));
    }
  }
  run.tensors.fetch_add(1, std::memory_order_relaxed);
  run.bytes.fetch_add(in.size, std::memory_order_relaxed);
  st_tensors_.fetch_add(1, std::memory_order_relaxed);
  st_bytes_.fetch_add(in.size, std::memory_order_relaxed);
  if (!queued) {
    if (nonfinite) FoundNonfinite(run, in.run_id, in.key_id, seq);
    return TFDUMP_SUBMIT_OK;
  }
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

bool Engine::Deferring() const {
  return options_.defer_during_runs && open_runs_.load() > 0 && !overlap_runs_.load() && flushing_.load() == 0 &&
         !shutdown_.load() &&
         budget_waiters_.load() == 0 && error_.load() == kOk && queued_bytes_.load() < options_.queue_bytes / 2;
}

bool Engine::WaitIdle(int timeout_ms) {
  flushing_.fetch_add(1);
  BoostWorkers();  // a flush must not wait behind idle-class writers either
  Kick();
  bool idle;
  {
    std::unique_lock<std::mutex> lk(idle_mu_);
    idle = idle_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return outstanding_.load() == 0; });
  }
  flushing_.fetch_sub(1);
  MaybeUnboostWorkers();  // back to the background now, not at the workers' next wake-up
  return idle;
}

void Engine::Shutdown() {
  shutdown_.store(true);
  BoostWorkers();
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
  for (const Stripe& st : stripes_) s.payloads_aliased += st.aliased.load(std::memory_order_relaxed);
  s.queued_bytes = queued_bytes_.load();
  s.queue_high_water = high_water_.load();
  s.records_outstanding = outstanding_.load();
  s.worker_boosts = st_boosts_.load();
  s.workers_boosted = boosted_.load();
  s.producers_waiting = static_cast<uint64_t>(budget_waiters_.load());
  s.worker_background = background_.load();
  s.held_bytes = held_bytes_.load();
  s.held_runs = ring_size_.load();  // no lock: producers take flight_mu_
  s.held_runs_evicted = st_evicted_runs_.load();
  s.held_tensors_evicted = st_evicted_tensors_.load();
  s.held_runs_released = st_released_runs_.load();
  s.held_overflow_tensors = st_overflow_.load();
  s.nonfinite_triggers = st_nonfinite_.load();
  return s;
}

// ---------------------------------------------------------------- scheduling

void Engine::DecideBackground(int background_nice, bool background_idle) {
  // Called with sched_mu_ held, on the first writer thread: its nice is the
  // one its creator (the process) runs at, and the one raised writers get.
#ifdef __linux__
  base_nice_ = ThreadNice(CurrentTid());
  const int policy = background_idle ? SCHED_IDLE : SCHED_OTHER;
  const int nice = background_nice > base_nice_ ? background_nice : base_nice_;
  if (policy == SCHED_OTHER && nice == base_nice_) {
    background_policy_ = SCHED_OTHER;
    background_nice_ = base_nice_;
    background_.store(kBackgroundNormal);
  } else if (BackgroundIsReversible(policy, nice, base_nice_)) {
    background_policy_ = policy;
    background_nice_ = nice;
    background_.store(background_idle ? kBackgroundIdle : kBackgroundNice);
  } else {
    // Unprivileged with RLIMIT_NICE 0 (the usual case): a thread that
    // entered SCHED_IDLE or a higher nice could never be raised again, and
    // under CPU contention producers would wait on it indefinitely.
    // SCHED_BATCH keeps the own nice: it does not preempt TF's threads on
    // wake-up, and the way back to SCHED_OTHER is always allowed.
    background_policy_ = background_idle ? SCHED_BATCH : SCHED_OTHER;
    background_nice_ = base_nice_;
    background_.store(background_idle ? kBackgroundBatch : kBackgroundNormal);
  }
  sched_pid_ = static_cast<long>(getpid());
#else
  (void)background_nice, (void)background_idle;
  background_.store(kBackgroundNormal);
#endif
}

void Engine::ApplyClass(long tid, bool boosted) {
#ifdef __linux__
  if (tid == 0 || background_.load() == kBackgroundNormal) return;
  if (boosted) {
    SetThreadClass(tid, SCHED_OTHER, base_nice_);
  } else {
    SetThreadClass(tid, background_policy_, background_nice_);
  }
#else
  (void)tid, (void)boosted;
#endif
}

void Engine::EnterWorker(int worker, int background_nice, bool background_idle) {
  if (worker < 0 || worker >= options_.workers) return;
  std::lock_guard<std::mutex> lk(sched_mu_);
  if (background_.load() == kBackgroundUnset) DecideBackground(background_nice, background_idle);
  if (worker_tids_.size() < static_cast<size_t>(options_.workers)) worker_tids_.resize(options_.workers, 0);
  const long tid = CurrentTid();
  worker_tids_[worker] = tid;
  ApplyClass(tid, boosted_.load());
}

void Engine::LeaveWorker(int worker) {
  std::lock_guard<std::mutex> lk(sched_mu_);
  // The id may name another thread once this one has exited.
  if (worker >= 0 && static_cast<size_t>(worker) < worker_tids_.size()) worker_tids_[worker] = 0;
}

void Engine::BoostWorkers() {
  std::lock_guard<std::mutex> lk(sched_mu_);
  if (boosted_.load()) return;
  boosted_.store(true);
  st_boosts_.fetch_add(1, std::memory_order_relaxed);
  // A forked child holds a copy of the engine but not its threads: the
  // recorded ids are its parent's.
  if (sched_pid_ != static_cast<long>(getpid())) return;
  for (long tid : worker_tids_) ApplyClass(tid, true);
}

void Engine::MaybeUnboostWorkers() {
  // Hysteresis: raised at a waiting producer or half full, back at 1/4 full,
  // so the class does not flip on every frame.
  auto calm = [&] {
    return budget_waiters_.load() == 0 && flushing_.load() == 0 && !shutdown_.load() &&
           queued_bytes_.load() < options_.queue_bytes / 4;
  };
  if (!calm()) return;
  std::lock_guard<std::mutex> lk(sched_mu_);
  if (!boosted_.load() || !calm()) return;
  boosted_.store(false);
  if (sched_pid_ != static_cast<long>(getpid())) return;
  for (long tid : worker_tids_) ApplyClass(tid, false);
}

std::vector<LateDrop> Engine::TakeLateDrops() {
  std::lock_guard<std::mutex> lk(late_mu_);
  std::vector<LateDrop> out;
  out.swap(late_drops_);
  return out;
}

}  // namespace tfdump
