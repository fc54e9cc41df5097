// The capture engine: accepts tensors from any thread (TF executor threads
// through the bridge, or Python through tfdump_fast._native), holds them in a
// bounded queue (engine.cc), and lays them out as frames for the writer
// workers (engine_frames.cc). No Python, no TensorFlow: see engine_api.h for
// the C ABI the bridge uses.
#ifndef TFDUMP_ENGINE_H_
#define TFDUMP_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine_api.h"
#include "flat_map.h"
#include "format.h"

namespace tfdump {

// Copied payloads at least this large are compared with the few copied just
// before on the same thread (Record::aliased); smaller ones cost less to copy
// and hash again.
constexpr size_t kMinAliasedPayload = 128;

enum class Backpressure : int { kBlock = 0, kDrop = 1 };

struct EngineOptions {
  uint64_t queue_bytes = 256ull << 20;   // byte budget of accepted, unwritten tensors
  Backpressure policy = Backpressure::kBlock;
  int workers = 2;
  uint64_t frame_bytes = 2ull << 20;     // small records are batched up to this size
  bool shuffle = true;                   // byte-shuffle numeric payloads
  uint64_t zero_copy_threshold = 64ull << 10;
  bool discard = false;                  // accept and drop everything: the capture floor
  uint64_t dedup_max_entries = 256ull << 10;  // ~14 MiB of index at most
  // While a run is executing and the queue is under half full, workers wait:
  // the step does not share the CPU with compression, and the work is done
  // between runs. Past half full, on flush, when a producer waits on the
  // budget, or when the gaps between runs proved too short (a backlog at
  // three run starts in a row), they work regardless.
  bool defer_during_runs = true;
  // Flight recorder (BeginRun(run_id, hold=true)): the last `keep_last`
  // ended held runs stay in memory within `keep_bytes` (their records'
  // charges, executing held runs included) and reach the writers only when
  // a trigger releases them.
  uint32_t keep_last = 0;
  uint64_t keep_bytes = 512ull << 20;
  // A held run whose float tensor (half, bfloat16, float, double, complex)
  // holds an inf or nan is a trigger (found on the producing thread, where
  // the bytes are still in cache).
  bool persist_on_nonfinite = true;
};

// What the flight recorder did with a held run (Engine::TakeFlightChanges),
// in the order it happened.
struct FlightChange {
  uint32_t run_id;
  bool released;  // true: given to the writers; false: evicted from the ring (never written)
  uint64_t tensors = 0, bytes = 0;  // evicted: the held records let go
  // released while the run was still executing (the triggering run); false:
  // it had ended (a ring run), though its Python side may not know yet
  bool executing = false;
};

struct RunCounters {
  uint64_t tensors = 0, bytes = 0, dropped_tensors = 0, dropped_bytes = 0;
};

// Tensors lost after they were accepted (disk budget, write error, encoder
// failure); reported to the metadata shard as `drops` events.
struct LateDrop {
  uint32_t run_id;
  uint64_t tensors, bytes;
  int reason;  // StatusCode, or kDropReasonMuted
};
// LateDrop::reason of records whose encoder returned TFDUMP_ENCODE_MUTED:
// left out on purpose, not lost (not a StatusCode).
constexpr int kDropReasonMuted = 1000;

struct EngineStats {
  uint64_t tensors_accepted = 0, bytes_accepted = 0;
  uint64_t tensors_dropped = 0, bytes_dropped = 0;
  uint64_t tensors_written = 0;
  uint64_t payload_bytes_stored = 0;   // distinct payload bytes laid out in frames
  uint64_t payload_bytes_deduped = 0;  // payload bytes not stored again thanks to dedup
  uint64_t frames = 0;
  // Records whose payload equals one copied just before on the same thread
  // (pass-through ops: Identity, Switch, Merge, ...): stored as a reference
  // to that copy, neither copied nor hashed again.
  uint64_t payloads_aliased = 0;
  uint64_t queued_bytes = 0, queue_high_water = 0;
  uint64_t records_outstanding = 0;
  // Writer-thread scheduling (see Engine::EnterWorker).
  uint64_t worker_boosts = 0;        // times the writers were raised to the normal class
  bool workers_boosted = false;      // raised now
  uint64_t producers_waiting = 0;    // producers waiting for queue room now
  int worker_background = 0;         // WorkerBackground the writers use while not raised
  // Flight recorder.
  uint64_t held_bytes = 0;            // charges of held records now (ring and executing runs)
  uint64_t held_runs = 0;             // ended runs in the ring now
  uint64_t held_runs_evicted = 0;     // ended runs let go unwritten (the requested behaviour)
  uint64_t held_tensors_evicted = 0;
  uint64_t held_runs_released = 0;    // held runs given to the writers by a trigger
  uint64_t held_overflow_tensors = 0; // dropped: the executing held runs alone filled keep_bytes
  uint64_t nonfinite_triggers = 0;    // held runs released because a float tensor held inf/nan
};

// How writer threads run while not raised. kIdle/kNice: the configured
// background (SCHED_IDLE and/or a higher nice), chosen only when this process
// may undo it. kBatch: SCHED_BATCH at the thread's own nice, the fallback when
// leaving SCHED_IDLE would need CAP_SYS_NICE or RLIMIT_NICE. kNormal: no
// background class (not configured, not Linux, or nothing reversible).
enum WorkerBackground : int { kBackgroundUnset = 0, kBackgroundNormal = 1, kBackgroundIdle = 2,
                              kBackgroundNice = 3, kBackgroundBatch = 4 };

struct Record {
  uint32_t run_id = 0, key_id = 0;
  uint64_t seq = 0;
  int64_t wall_us = 0;
  int32_t dtype = 0;
  uint32_t flags = 0;
  uint32_t elem_size = 0;
  // Shapes of up to kInlineDims dimensions live in the record itself: no
  // allocation per tensor on TF's threads.
  static constexpr int kInlineDims = 6;
  int32_t ndims = 0;
  int64_t inline_dims[kInlineDims];
  std::vector<int64_t> heap_dims;
  const int64_t* dims() const { return ndims <= kInlineDims ? inline_dims : heap_dims.data(); }
  const uint8_t* data = nullptr;
  size_t size = 0;
  tfdump_encode_fn encode = nullptr;
  void* owner = nullptr;
  tfdump_release_fn release = nullptr;
  uint64_t charge = 0;
  // The payload is another record's copy (same bytes, same address): it
  // charges only its bookkeeping, and its hash is looked up by address. It
  // still counts its size towards a frame's worth of records, so frames (and
  // the time a worker holds a stripe's lock to take them) stay as large as
  // before.
  bool aliased = false;
};

// Leaves new elements uninitialized: the frame's data block is resized and
// then overwritten, so zero-filling it first would be wasted work.
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// One frame laid out by a worker, waiting to be compressed and written.
struct Frame {
  int worker = 0;
  TableWriter table;
  std::vector<uint8_t, DefaultInitAllocator<uint8_t>> data;
  std::vector<Record> records;
  std::vector<std::pair<Hash128, uint64_t>> new_hashes;  // (hash, size) of blobs stored here
  uint64_t charge = 0;
  uint32_t n_tensors = 0;
  std::vector<LateDrop> encode_failures;
  // Empties the frame for reuse, keeping its buffers' capacity.
  void Reset() {
    table.Clear();
    data.clear();
    records.clear();
    new_hashes.clear();
    charge = 0;
    n_tensors = 0;
    encode_failures.clear();
  }
};

class Engine {
 public:
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const tfdump_engine_api* api() const { return &api_; }

  uint32_t InternKey(const char* device, size_t device_len, const char* node, size_t node_len, int32_t slot,
                     const char* debug_op, size_t debug_op_len);
  // Any thread. Never throws. TFDUMP_SUBMIT_* codes.
  int Submit(const tfdump_tensor_in& in);

  // hold: the run's records (DebugIdentity keys; other debug ops, i.e.
  // summaries, go to the writers as usual) are kept back for the flight
  // recorder instead of being queued for the writers.
  void BeginRun(uint32_t run_id, bool hold = false);
  // persist: a held run that is not released yet is released now, with the
  // ring before it (a trigger, e.g. the run raised). Otherwise a held run
  // joins the ring, evicting its oldest runs past keep_last / keep_bytes.
  RunCounters EndRun(uint32_t run_id, bool persist = false);
  // A trigger from outside (e.g. the user): every ended run in the ring is
  // released. Returns how many.
  size_t Persist();
  // Lets every ended run of the ring go unwritten (the writer closes).
  void EvictAll();
  // Runs released or evicted since the last call, in order.
  std::vector<FlightChange> TakeFlightChanges();
  // The first inf/nan record found in a held run (key id and seq), if any.
  bool NonfiniteOf(uint32_t run_id, uint32_t* key_id, uint64_t* seq) const;
  // (device, node, output slot, debug op) of an interned key; false if unknown.
  bool KeyName(uint32_t key_id, std::string* device, std::string* node, int32_t* slot,
               std::string* debug_op) const;
  // How far a run's accepted records are settled: `accepted` records were
  // queued for it, `committed` of them were written or dropped after
  // acceptance (CommitFrame). False when the run's slot of the ring was
  // reused by a run kRunRing later (its counts are gone).
  bool RunProgress(uint32_t run_id, uint64_t* accepted, uint64_t* committed) const;

  // Worker side. Returns nullptr on timeout, or when shut down and drained
  // (then *finished is set).
  std::unique_ptr<Frame> NextFrame(int worker, int timeout_ms, bool* finished);
  // status kOk: the frame is on disk; otherwise its tensors are lost and
  // counted as late drops with that reason.
  void CommitFrame(std::unique_ptr<Frame> frame, int status);

  // Wakes workers so partial frames go out now.
  void Kick();
  // Waits until every accepted record is committed; false on timeout.
  bool WaitIdle(int timeout_ms);
  // Stops accepting (later submits are dropped); workers drain and finish.
  void Shutdown();
  // A worker failed for good (e.g. disk full): later submits are dropped and
  // counted; the Python side raises the error.
  void SetError(int code);
  int error() const { return error_.load(); }

  // Writer threads call EnterWorker first and LeaveWorker last (from the
  // thread itself). The engine records the thread's kernel id and puts it in
  // the background class (SCHED_IDLE when `idle`, at least nice
  // `background_nice`) so it uses only CPU that TF leaves; whenever a
  // producer waits for queue room, the queue passes 1/2 full, or a flush or
  // shutdown waits, every writer is raised to SCHED_OTHER at the thread's
  // own nice, and dropped back once the queue is under 1/4 full and nobody
  // waits. A background that this process could not undo (leaving
  // SCHED_IDLE or lowering nice needs CAP_SYS_NICE or RLIMIT_NICE) is never
  // entered: SCHED_BATCH at the own nice is used instead.
  void EnterWorker(int worker, int background_nice, bool background_idle);
  void LeaveWorker(int worker);

  EngineStats Stats() const;
  std::vector<LateDrop> TakeLateDrops();

 private:
  struct RunState {
    std::atomic<uint32_t> run_id{0};
    std::atomic<bool> open{false};
    std::atomic<uint64_t> seq{0}, tensors{0}, bytes{0}, dropped_tensors{0}, dropped_bytes{0};
    // Accepted records settled by CommitFrame (written, or lost after
    // acceptance): the exact durability check compares it with `tensors`.
    std::atomic<uint64_t> committed{0};
    // Flight recorder: records are kept back (Stripe::held) while `held`;
    // the first inf/nan record found (seq, key) is written under flight_mu_.
    std::atomic<bool> held{false};
    std::atomic<uint64_t> bad_seq{~0ull};
    std::atomic<uint32_t> bad_key{0};
  };
  // Adds `n` settled records to run `run_id` (one atomic add per run per frame).
  void CountCommitted(uint32_t run_id, uint64_t n);
  struct Chunk;
  // A payload copied into the stripe's current chunk, remembered so that an
  // equal payload right after it (a pass-through op's output) can refer to it.
  struct RecentCopy {
    const uint8_t* data = nullptr;
    size_t size = 0;
  };
  static constexpr size_t kRecentCopies = 8;
  struct Stripe {
    std::mutex mu;
    // records[head, size) wait for a worker. A vector reused step after step
    // rather than a deque: a deque allocates a node per three records on
    // TF's threads and frees it on a worker's.
    std::vector<Record> records;
    size_t head = 0;
    Chunk* chunk = nullptr;  // per-producer copy buffer for small payloads
    // References to `chunk` handed to records since it became current: the
    // chunk was created holding a large advance of references, and the
    // unused part is given back when it is retired (RetireChunk), so that
    // producers never touch the chunk's atomic count per record (it bounces
    // between the producer's and the workers' cores otherwise).
    int chunk_refs_handed = 0;
    RecentCopy recent[kRecentCopies];
    unsigned recent_next = 0;
    // Records stored as references (stats). Written under `mu` by the
    // producers only; read without it by Stats(), which must never take a
    // producer's lock: a background-class writer preempted while holding it
    // would stall TF's thread.
    std::atomic<uint64_t> aliased{0};
    // Records of held runs still executing (flight recorder); moved to the
    // ring when their run ends, or to `records` when a trigger releases it.
    std::vector<Record> held;
  };
  struct KeyInfo {
    int32_t slot;
    std::string device, node, debug_op;
    bool holdable;  // DebugIdentity: a full tensor the flight recorder keeps back
  };
  // An ended held run in the flight recorder's ring.
  struct HeldRun {
    uint32_t run_id = 0;
    std::vector<Record> records;
    uint64_t charge = 0, bytes = 0;
  };

  static constexpr size_t kRunRing = 4096;
  static constexpr size_t kStripes = 16;

  bool ReserveBudget(uint64_t charge);
  void ReleaseBudget(uint64_t charge);
  void CountDrop(RunState* run, uint64_t bytes);
  void ReleaseRecord(Record& r);
  // Releases `n` records' owners; consecutive records of one chunk give back
  // their references at once.
  void ReleaseRecords(Record* records, size_t n);
  void RetireChunk(Stripe& s);

  // Flight recorder (engine.cc). The *Locked ones need flight_mu_.
  bool KeyHoldable(uint32_t key_id) const;
  bool ReserveHeld(uint64_t charge);
  // Queues records for the writers regardless of the budget (the memory is
  // already held): moves their charge from the held to the queued bytes.
  // Queues held records whose charge and bytes add up to those given.
  void QueueRecords(std::vector<Record>* records, uint64_t charge, uint64_t bytes);
  // Moves one run's held records out of every stripe (the others stay, in
  // order) into `out`, adding their charge and bytes to the counters given.
  void TakeHeldLocked(uint32_t run_id, std::vector<Record>* out, uint64_t* charge, uint64_t* bytes);
  // A held record's budget charge moves to the queue's (it is queued now).
  void MoveHeldChargeToQueue(uint64_t charge);
  void ReleaseRingLocked();
  void ReleaseOpenRunLocked(RunState& run, uint32_t run_id);
  void EvictOldestLocked();
  void FoundNonfinite(RunState& run, uint32_t run_id, uint32_t key_id, uint64_t seq);

  // NextFrame's steps (engine_frames.cc), in order.
  struct FrameScratch;
  // Waits for work; false when there is none to take now (*finished: none
  // will come).
  bool WaitForWork(int timeout_ms, bool* finished);
  // A pooled or new frame holding the next queued records, or nullptr.
  std::unique_ptr<Frame> TakeRecords(int worker);
  // Runs the deferred encoders and hashes every payload (no lock held).
  void EncodeAndHash(Frame* frame, FrameScratch* scratch);
  // Marks the payloads that earlier frames already hold (one lock).
  void FindCommittedPayloads(const Frame* frame, FrameScratch* scratch);
  // Lays out the record table and the data block.
  void LayOutRecords(Frame* frame, FrameScratch* scratch);
  void EmitKeyDef(Frame* frame, uint32_t key_id, std::vector<bool>* emitted);
  void StoreBlob(Frame* frame, const Hash128& h, const uint8_t* p, size_t n, uint32_t elem_size, bool numeric,
                 FlatSet<Hash128, Hash128Hasher>* frame_hashes);

  EngineOptions options_;
  tfdump_engine_api api_;

  RunState runs_[kRunRing];
  Stripe stripes_[kStripes];

  mutable std::shared_mutex keys_mu_;
  std::unordered_map<std::string, uint32_t> key_ids_;
  std::deque<KeyInfo> keys_;
  // Whether a key is DebugIdentity (1) or another debug op (2), for the
  // first kFastKeys keys: read by every held submit without keys_mu_.
  static constexpr size_t kFastKeys = 1u << 16;
  std::unique_ptr<std::atomic<uint8_t>[]> key_holdable_{new std::atomic<uint8_t>[kFastKeys]()};

  std::atomic<uint64_t> queued_bytes_{0}, high_water_{0};
  std::atomic<uint64_t> pending_records_{0}, pending_bytes_{0};  // not yet taken by a worker
  std::atomic<uint64_t> outstanding_{0};                         // accepted, not yet committed
  std::atomic<int> budget_waiters_{0};
  std::mutex budget_mu_;
  std::condition_variable budget_cv_;

  std::mutex work_mu_;
  std::condition_variable work_cv_;
  std::atomic<uint64_t> kicks_{0};
  std::atomic<int> idle_workers_{0};
  std::atomic<bool> shutdown_{false};
  std::atomic<int> open_runs_{0}, flushing_{0};
  static constexpr int kBackloggedStartsBeforeOverlap = 3;
  std::atomic<int> backlogged_starts_{0};
  std::atomic<bool> overlap_runs_{false};  // deferral suspended: the writer is behind
  bool Deferring() const;
  std::atomic<int> error_{0};
  std::atomic<unsigned> next_stripe_{0};

  std::mutex idle_mu_;
  std::condition_variable idle_cv_;

  std::mutex dedup_mu_;
  FlatSet<Hash128, Hash128Hasher> committed_;
  std::vector<std::vector<bool>> emitted_keys_;  // per worker: KEY_DEF already written to its shard

  std::mutex frame_pool_mu_;
  std::vector<std::unique_ptr<Frame>> frame_pool_;  // committed frames, reused with their buffers

  std::mutex chunk_pool_mu_;
  std::vector<Chunk*> chunk_pool_;

  // Flight recorder: flight_mu_ is taken before any stripe's lock.
  mutable std::mutex flight_mu_;
  std::deque<HeldRun> ring_;  // ended held runs, oldest first
  std::vector<FlightChange> flight_changes_;
  std::atomic<uint64_t> held_bytes_{0}, ring_size_{0};
  std::atomic<uint64_t> st_evicted_runs_{0}, st_evicted_tensors_{0}, st_released_runs_{0}, st_overflow_{0},
      st_nonfinite_{0};

  std::mutex late_mu_;
  std::vector<LateDrop> late_drops_;

  // Writer-thread scheduling (engine.cc).
  void BoostWorkers();
  void MaybeUnboostWorkers();
  void DecideBackground(int background_nice, bool background_idle);
  void ApplyClass(long tid, bool boosted);
  std::mutex sched_mu_;
  std::vector<long> worker_tids_;  // kernel thread ids of running writers (0: none)
  long sched_pid_ = 0;             // the process the ids belong to (not a forked child)
  int base_nice_ = 0, background_policy_ = 0, background_nice_ = 0;
  std::atomic<int> background_{kBackgroundUnset};
  std::atomic<bool> boosted_{false};
  std::atomic<uint64_t> st_boosts_{0};

  std::atomic<uint64_t> st_tensors_{0}, st_bytes_{0}, st_dropped_{0}, st_dropped_bytes_{0};
  std::atomic<uint64_t> st_written_{0}, st_stored_{0}, st_deduped_{0}, st_frames_{0};
};

}  // namespace tfdump

#endif  // TFDUMP_ENGINE_H_
