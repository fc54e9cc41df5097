// The TensorFlow capture bridge, libtfdump_tf_bridge.so: its slots, their
// memcbk callbacks and the C API it exports (bridge_api.h). The files of
// csrc/bridge/ (listed in csrc/bridge/SOURCES) make up the library:
// slots.cc (this), capture.cc (how a tensor is handed to the engine),
// encoders.cc (payload encodings), tensor_lists.cc (TensorList shadows and
// list blobs).
//
// Compiled on first use against the TensorFlow that runs (see
// src/tfdump_fast/bridge.py) and loaded with dlopen by tfdump_fast._bridge.
// It registers one `memcbk://tfdump_slot_<i>` callback per slot with
// TensorFlow's DebugCallbackRegistry; tfdbg's debug ops then hand every
// watched tensor to OnTensor() synchronously on TF executor threads, and we
// forward it to the capture engine through the plain-C tfdump_engine_api
// (engine_api.h). The C ABI we export is in bridge_api.h.
//
// Rules for everything reachable from a TF thread: a few microseconds per
// tensor, no Python, no exceptions escaping into TensorFlow, no blocking
// except inside engine->submit (the engine's backpressure policy).

#include <stdint.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tensorflow/core/debug/debug_callback_registry.h"
#include "tensorflow/core/debug/debug_node_key.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/public/version.h"
#if __has_include("tensorflow/core/public/release_version.h")
// Since TF 2.2x the version numbers are no longer written into the headers:
// TF's own build passes them as -D flags and so does our builder
// (bridge.py, from the tf.__version__ of the wheel whose headers we use).
#include "tensorflow/core/public/release_version.h"
#endif

#include "bridge/capture.h"
#include "bridge/slots.h"
#include "bridge/summaries.h"
#include "bridge/tensor_lists.h"
#include "bridge_api.h"
// The TF version this library was compiled against. The loader compares it
// with tf.__version__ and refuses a library built for another TF (the C++ ABI
// of tensorflow::Tensor & co. is not stable across releases). The test suite
// overrides it to exercise that check.
#if defined(TFDUMP_FAKE_TF_VERSION)
#define TFDUMP_BRIDGE_TF_VERSION TFDUMP_FAKE_TF_VERSION
#elif defined(TF_VERSION_STRING)
#define TFDUMP_BRIDGE_TF_VERSION TF_VERSION_STRING
#else
#error "TF version unknown: build with -DTF_MAJOR_VERSION=.. -DTF_MINOR_VERSION=.. -DTF_PATCH_VERSION=.. -DTF_VERSION_SUFFIX=\"..\""
#endif

// tf.version.GIT_VERSION is not reachable from C++ headers; the builder
// passes it in as a string literal (informational only).
#ifndef TFDUMP_TF_GIT_VERSION
#define TFDUMP_TF_GIT_VERSION ""
#endif

#define TFDUMP_EXPORT __attribute__((visibility("default")))

namespace {

using tensorflow::DebugNodeKey;
using tensorflow::Tensor;
using tfdump::bridge::DeleteListRegistry;
using tfdump::bridge::ListRegistry;
using tfdump::bridge::NewListRegistry;
using tfdump::bridge::SubmitTensor;

using tfdump::bridge::kMaxSlots;

// ---------------------------------------------------------------------------
// Statistics: per-thread counters summed on demand, so the hot path never
// writes a cache line shared with other executor threads.

struct ThreadStats {
  std::atomic<uint64_t> forwarded{0};
  std::atomic<uint64_t> orphaned{0};
  std::atomic<uint64_t> failed{0};
};

std::mutex g_stats_mu;
// Leaked on purpose: a thread's counters must outlive the thread (they are
// summed later) and the library is never unloaded.
std::vector<ThreadStats*>* g_all_stats = new std::vector<ThreadStats*>();

// Used by threads whose own block could not be allocated.
ThreadStats g_fallback_stats;

// Never throws: it is called from the noexcept TF callback. If the
// registration fails (out of memory) the thread counts into the shared
// fallback block (its counts may then be slightly off).
ThreadStats* MyStats() noexcept {
  thread_local ThreadStats* mine = nullptr;
  if (mine == nullptr) {
    try {
      std::unique_ptr<ThreadStats> s(new ThreadStats());
      std::lock_guard<std::mutex> lock(g_stats_mu);
      g_all_stats->push_back(s.get());
      mine = s.release();
    } catch (...) {
      return &g_fallback_stats;
    }
  }
  return mine;
}

inline void Bump(std::atomic<uint64_t>& c) {
  // Only this thread writes the counter: a relaxed load+store is enough and
  // avoids a locked instruction.
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------
// Slots.

struct ListRegistryDeleter {
  void operator()(ListRegistry* r) const { DeleteListRegistry(r); }
};

// Immutable once published (the list registry has its own lock); freed by
// release_slot after the last callback that could have seen it has finished.
struct Binding {
  const tfdump_engine_api* api;
  uint32_t run_id;
  // Identifies "this engine, while continuously bound". Key ids are per
  // engine and an engine's address may be reused by a later engine once the
  // first is gone, so the per-thread key cache is keyed on the epoch rather
  // than on the pointer alone.
  uint64_t epoch;
  // Shadows of the TensorLists this run dumped (bridge/tensor_lists.h).
  std::unique_ptr<ListRegistry, ListRegistryDeleter> lists;
};

struct alignas(64) Slot {
  std::atomic<Binding*> binding{nullptr};
  std::atomic<int64_t> inflight{0};
  // Guarded by g_slots_mu.
  bool registered = false;
  bool busy = false;
};

std::mutex g_slots_mu;
Slot g_slots[kMaxSlots];
uint64_t g_epoch_counter = 0;  // guarded by g_slots_mu

// ---------------------------------------------------------------------------
// Per-thread key-id cache. intern_key takes the engine's lock and hashes
// three strings; a tensor watched inside a while loop arrives once per
// iteration with the same DebugNodeKey object, so remembering the id per
// (key object, engine epoch) saves most of that. A hit also compares the key
// contents, so a DebugNodeKey freed and reallocated at the same address (a
// kernel destroyed and another created) can never reuse a wrong id.

struct KeyCacheEntry {
  const DebugNodeKey* nk = nullptr;
  uint64_t epoch = 0;
  int32_t output_slot = 0;
  uint32_t id = 0;
  std::string device, node, op;
};

constexpr size_t kKeyCacheSize = 256;  // direct-mapped, power of two

uint32_t InternKey(const Binding& b, const DebugNodeKey& k) {
  thread_local std::unique_ptr<KeyCacheEntry[]> cache(
      new KeyCacheEntry[kKeyCacheSize]);
  uintptr_t h = reinterpret_cast<uintptr_t>(&k) >> 4;
  h ^= static_cast<uintptr_t>(b.epoch) * 0x9E3779B97F4A7C15ull;
  h ^= h >> 17;
  KeyCacheEntry& e = cache[h & (kKeyCacheSize - 1)];
  if (e.nk == &k && e.epoch == b.epoch && e.output_slot == k.output_slot &&
      e.node == k.node_name && e.device == k.device_name && e.op == k.debug_op) {
    return e.id;
  }
  const tfdump_engine_api* api = b.api;
  uint32_t id = api->intern_key(api->engine, k.device_name.data(),
                                k.device_name.size(), k.node_name.data(),
                                k.node_name.size(), k.output_slot,
                                k.debug_op.data(), k.debug_op.size());
  e.nk = &k;
  e.epoch = b.epoch;
  e.output_slot = k.output_slot;
  e.id = id;
  e.device.assign(k.device_name);
  e.node.assign(k.node_name);
  e.op.assign(k.debug_op);
  return id;
}

// Runs `submit` under slot `slot_index`'s binding, on a TF executor thread.
template <typename Submit>
void WithSlot(int slot_index, const DebugNodeKey& k, const Submit& submit) noexcept {
  Slot& s = g_slots[slot_index];
  ThreadStats* st = MyStats();
  // Announce ourselves before looking at the binding: release_slot clears
  // the binding and then waits for inflight to reach 0, and sequentially
  // consistent ordering guarantees that either we see the cleared binding or
  // release_slot sees our increment (never neither).
  s.inflight.fetch_add(1, std::memory_order_seq_cst);
  Binding* b = s.binding.load(std::memory_order_seq_cst);
  if (b == nullptr) {
    Bump(st->orphaned);
  } else {
    try {
      int rc = submit(*b, InternKey(*b, k));
      if (rc == TFDUMP_SUBMIT_OK || rc == TFDUMP_SUBMIT_DROPPED) {
        Bump(st->forwarded);  // dropped ones are counted by the engine
      } else if (rc == TFDUMP_SUBMIT_BAD_RUN) {
        Bump(st->orphaned);
      } else if (rc != tfdump::bridge::kSummarySkipped) {  // skipped: counted as such
        Bump(st->failed);
      }
    } catch (...) {
      // Never let anything propagate into TensorFlow's executor.
      Bump(st->failed);
    }
  }
  s.inflight.fetch_sub(1, std::memory_order_release);
}

// The memcbk callback of slot `slot_index`, on a TF executor thread.
void OnTensor(int slot_index, const DebugNodeKey& k, const Tensor& t) noexcept {
  WithSlot(slot_index, k, [&t](const Binding& b, uint32_t key_id) {
    return SubmitTensor(b.api, b.run_id, key_id, b.lists.get(), t);
  });
}

std::string SlotKey(int i) { return "tfdump_slot_" + std::to_string(i); }

int AcquireSlot(const tfdump_engine_api* api, uint32_t run_id, char* url_out,
                size_t url_cap) {
  if (api == nullptr || api->api_version != TFDUMP_ENGINE_API_VERSION ||
      api->intern_key == nullptr || api->submit == nullptr) {
    return -1;
  }
  try {
    std::lock_guard<std::mutex> lock(g_slots_mu);
    int idx = -1;
    for (int i = 0; i < kMaxSlots; ++i) {
      if (!g_slots[i].busy) {
        idx = i;
        break;
      }
    }
    if (idx < 0) return -1;
    const std::string url = "memcbk://" + SlotKey(idx);
    if (url_out == nullptr || url_cap < url.size() + 1) return -1;

    // Same engine already bound elsewhere: it is alive, keep its epoch so
    // concurrent runs share cached key ids. Otherwise start a new epoch.
    uint64_t epoch = 0;
    for (int i = 0; i < kMaxSlots; ++i) {
      Binding* ob = g_slots[i].binding.load(std::memory_order_relaxed);
      if (g_slots[i].busy && ob != nullptr && ob->api == api) {
        epoch = ob->epoch;
        break;
      }
    }
    if (epoch == 0) epoch = ++g_epoch_counter;

    Slot& s = g_slots[idx];
    if (!s.registered) {
      // Registered once and never unregistered: TF CHECK-fails (aborts the
      // process) on a memcbk URL without a callback, and a cached executor
      // may still carry this URL long after our run.
      tensorflow::DebugCallbackRegistry::singleton()->RegisterCallback(
          SlotKey(idx), [idx](const DebugNodeKey& k, const Tensor& t) {
            OnTensor(idx, k, t);
          });
      s.registered = true;
    }
    s.busy = true;
    s.binding.store(new Binding{api, run_id, epoch, std::unique_ptr<ListRegistry, ListRegistryDeleter>(NewListRegistry())}, std::memory_order_seq_cst);
    memcpy(url_out, url.c_str(), url.size() + 1);
    return idx;
  } catch (...) {
    return -1;
  }
}

void ReleaseSlot(int slot) {
  if (slot < 0 || slot >= kMaxSlots) return;
  Slot& s = g_slots[slot];
  Binding* b;
  {
    std::lock_guard<std::mutex> lock(g_slots_mu);
    if (!s.busy) return;
    b = s.binding.exchange(nullptr, std::memory_order_seq_cst);
  }
  // Wait for callbacks that already saw the binding (they may be blocked in
  // engine submit under the `block` policy; the engine's workers drain it),
  // so the caller may close the engine as soon as we return.
  int spins = 0;
  while (s.inflight.load(std::memory_order_acquire) != 0) {
    if (++spins < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  delete b;
  std::lock_guard<std::mutex> lock(g_slots_mu);
  s.busy = false;  // only now may the slot be handed out again
}

void GetStats(tfdump_bridge_stats* out) {
  if (out == nullptr) return;
  tfdump_bridge_stats r;
  memset(&r, 0, sizeof(r));
  std::lock_guard<std::mutex> lock(g_stats_mu);
  std::vector<const ThreadStats*> all(g_all_stats->begin(), g_all_stats->end());
  all.push_back(&g_fallback_stats);
  for (const ThreadStats* s : all) {
    r.tensors_forwarded += s->forwarded.load(std::memory_order_relaxed);
    r.tensors_orphaned += s->orphaned.load(std::memory_order_relaxed);
    r.tensors_failed += s->failed.load(std::memory_order_relaxed);
  }
  const tfdump::bridge::SummaryStats ss = tfdump::bridge::GetSummaryStats();
  r.summaries_submitted = ss.submitted;
  r.summaries_skipped = ss.skipped;
  r.summaries_muted = ss.muted;
  *out = r;
}

const tfdump_bridge_api kApi = {
    TFDUMP_BRIDGE_API_VERSION, TFDUMP_BRIDGE_TF_VERSION, TFDUMP_TF_GIT_VERSION,
    kMaxSlots,                 AcquireSlot,              ReleaseSlot,
    GetStats,
};

}  // namespace

namespace tfdump {
namespace bridge {

int SlotOfUrl(const std::string& url) {
  static const std::string prefix = "memcbk://tfdump_slot_";
  if (url.compare(0, prefix.size(), prefix) != 0 || url.size() == prefix.size()) return -1;
  int i = 0;
  for (size_t p = prefix.size(); p < url.size(); ++p) {
    if (url[p] < '0' || url[p] > '9' || i > kMaxSlots) return -1;
    i = i * 10 + (url[p] - '0');
  }
  return i < kMaxSlots ? i : -1;
}

void SplitTensorName(const std::string& tensor_name, std::string* node, int32_t* output_slot) {
  const size_t colon = tensor_name.rfind(':');
  *node = tensor_name.substr(0, colon);
  *output_slot = colon == std::string::npos ? 0 : static_cast<int32_t>(atoi(tensor_name.c_str() + colon + 1));
}

void SubmitThroughSlot(int slot, const DebugNodeKey& key, SlotSubmitFn fn, void* ctx) noexcept {
  if (slot < 0 || slot >= kMaxSlots) return;
  WithSlot(slot, key, [fn, ctx](const Binding& b, uint32_t key_id) { return fn(b.api, b.run_id, key_id, ctx); });
}

}  // namespace bridge
}  // namespace tfdump

extern "C" TFDUMP_EXPORT const tfdump_bridge_api* tfdump_bridge_get_api(void) {
  return &kApi;
}
