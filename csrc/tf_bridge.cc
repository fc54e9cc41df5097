// The TensorFlow capture bridge: libtfdump_tf_bridge.so.
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
#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "tensorflow/core/debug/debug_callback_registry.h"
#include "tensorflow/core/debug/debug_node_key.h"
#include "tensorflow/core/framework/resource_handle.h"
#include "tensorflow/core/framework/resource_handle.pb.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/framework/variant.h"
#include "tensorflow/core/framework/variant_tensor_data.h"
#include "tensorflow/core/kernels/tensor_list.h"
#include "tensorflow/core/public/version.h"
#if __has_include("tensorflow/core/public/release_version.h")
// Since TF 2.2x the version numbers are no longer written into the headers:
// TF's own build passes them as -D flags and so does our builder
// (bridge.py, from the tf.__version__ of the wheel whose headers we use).
#include "tensorflow/core/public/release_version.h"
#endif

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

using tensorflow::DataType;
using tensorflow::DebugNodeKey;
using tensorflow::Tensor;

constexpr int kMaxSlots = 64;
constexpr int kMaxDims = 256;  // TF allows at most 254

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

class ListRegistry;
void DeleteListRegistry(ListRegistry* r);
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
  // Shadows of the TensorLists this run dumped (see "TensorList snapshots").
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

// ---------------------------------------------------------------------------
// Payload helpers.

// Byte width of one lane for the shuffle filter: a complex number is two
// floats, and shuffling by float lanes compresses far better.
uint32_t ShuffleElemSize(DataType dt) {
  switch (dt) {
    case tensorflow::DT_COMPLEX64:
      return 4;
    case tensorflow::DT_COMPLEX128:
      return 8;
    default: {
      int s = tensorflow::DataTypeSize(dt);
      return s > 0 ? static_cast<uint32_t>(s) : 0;
    }
  }
}

void ReleaseTensor(void* owner) { delete static_cast<Tensor*>(owner); }

// Little-endian appenders (x86-64 / aarch64 are little-endian; FORMAT.md
// fixes little-endian).
template <typename T>
inline void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Coalesces the many small appends of a string encoding into few
// sink->append calls; large pieces go straight through.
class SinkWriter {
 public:
  explicit SinkWriter(tfdump_encode_sink* sink) : sink_(sink) {
    buf_.reserve(kChunk);
  }
  ~SinkWriter() { Flush(); }
  void Append(const void* p, size_t n) {
    if (n >= kChunk) {
      Flush();
      sink_->append(sink_, p, n);
      return;
    }
    buf_.append(static_cast<const char*>(p), n);
    if (buf_.size() >= kChunk) Flush();
  }
  void Flush() {
    if (!buf_.empty()) {
      sink_->append(sink_, buf_.data(), buf_.size());
      buf_.clear();
    }
  }

 private:
  static constexpr size_t kChunk = 64 << 10;
  tfdump_encode_sink* sink_;
  std::string buf_;
};

// String encoding (FORMAT.md): u64 n, u64 lengths[n], bytes concatenated.
// Out must provide Append(const void*, size_t).
struct StringOut {
  std::string* s;
  void Append(const void* p, size_t n) {
    s->append(static_cast<const char*>(p), n);
  }
};

template <typename Out>
void EncodeStrings(const Tensor& t, Out* out) {
  const int64_t n = t.NumElements();
  const tensorflow::tstring* v =
      static_cast<const tensorflow::tstring*>(t.data());
  uint64_t n64 = static_cast<uint64_t>(n);
  out->Append(&n64, 8);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t len = v[i].size();
    out->Append(&len, 8);
  }
  for (int64_t i = 0; i < n; ++i) out->Append(v[i].data(), v[i].size());
}

// DT_RESOURCE: each handle as the serialized ResourceHandleProto that
// Tensor::AsProtoTensorContent (i.e. tfdbg's file:// dump) would carry, laid
// out as the string encoding.
template <typename Out>
void EncodeResources(const Tensor& t, Out* out) {
  const int64_t n = t.NumElements();
  const tensorflow::ResourceHandle* v =
      static_cast<const tensorflow::ResourceHandle*>(t.data());
  std::vector<std::string> protos(static_cast<size_t>(n));
  tensorflow::ResourceHandleProto proto;
  for (int64_t i = 0; i < n; ++i) {
    proto.Clear();
    v[i].AsProto(&proto);
    protos[i] = proto.SerializeAsString();
  }
  uint64_t n64 = static_cast<uint64_t>(n);
  out->Append(&n64, 8);
  for (const std::string& p : protos) {
    uint64_t len = p.size();
    out->Append(&len, 8);
  }
  for (const std::string& p : protos) out->Append(p.data(), p.size());
}

// Owner of a variant tensor while it waits for its encoder: the tensor (which
// keeps every Variant, and through a TensorList its element buffers, alive)
// plus the VariantTensorData that Encode() produced, because the blobs handed
// to add_blob point into those tensors and must stay valid until release.
struct VariantOwner {
  Tensor tensor;
  std::vector<std::unique_ptr<tensorflow::VariantTensorData>> keep;
};

void ReleaseVariantOwner(void* owner) {
  delete static_cast<VariantOwner*>(owner);
}

void PutDims(std::string* out, const Tensor& t) {
  const int nd = t.dims();
  Put<uint8_t>(out, static_cast<uint8_t>(nd));
  for (int i = 0; i < nd; ++i) Put<int64_t>(out, t.dim_size(i));
}

void EncodeVariantElements(const Tensor& t, VariantOwner* owner,
                           tfdump_encode_sink* sink, std::string* out);

// tensor_desc of FORMAT.md's variant structure.
void EncodeSubTensor(const Tensor& st, VariantOwner* owner,
                     tfdump_encode_sink* sink, std::string* out) {
  const DataType dt = st.dtype();
  const bool init = st.IsInitialized();
  uint16_t flags = 0;
  if (!init) {
    flags |= TFDUMP_FLAG_UNINITIALIZED;
  } else if (dt == tensorflow::DT_STRING) {
    flags |= TFDUMP_FLAG_STRING;
  } else if (dt == tensorflow::DT_RESOURCE) {
    flags |= TFDUMP_FLAG_RESOURCE;
  } else if (dt == tensorflow::DT_VARIANT) {
    flags |= TFDUMP_FLAG_VARIANT;
  }
  Put<int32_t>(out, static_cast<int32_t>(dt));
  Put<uint16_t>(out, flags);
  PutDims(out, st);
  if (!init || st.NumElements() == 0) {
    Put<uint8_t>(out, 2);
    return;
  }
  if (tensorflow::DataTypeCanUseMemcpy(dt)) {
    absl::string_view data = st.tensor_data();
    Put<uint8_t>(out, 0);
    Put<uint32_t>(out, sink->add_blob(sink, data.data(), data.size(),
                                      ShuffleElemSize(dt)));
    return;
  }
  // Strings, resources and nested variants are stored inline.
  std::string inner;
  if (dt == tensorflow::DT_STRING) {
    StringOut so{&inner};
    EncodeStrings(st, &so);
  } else if (dt == tensorflow::DT_RESOURCE) {
    StringOut so{&inner};
    EncodeResources(st, &so);
  } else if (dt == tensorflow::DT_VARIANT) {
    EncodeVariantElements(st, owner, sink, &inner);
  } else {
    // A dtype we cannot serialize (none known today): keep the description,
    // drop the payload rather than fail the whole record.
    Put<uint8_t>(out, 2);
    return;
  }
  Put<uint8_t>(out, 1);
  Put<uint64_t>(out, inner.size());
  out->append(inner);
}

// ---------------------------------------------------------------------------
// TensorLists, described once per frame.
//
// Inside a lowered while loop every iteration dumps each gradient
// accumulator (a TensorList) several times (Enter/Merge/Switch/Identity pass
// the same list along) and the list grows by one element per iteration, so a
// 200-iteration step hands over ~5k lists holding ~480k element references
// to only ~600 distinct buffers. Describing each list element by element in
// every dump costs O(n) per dump. Instead, a list's element tensors go into
// one "list blob" (FORMAT.md, variant structure, TENSOR_LIST marker) whose
// payload references the element buffers by content hash; the list blob is
// built once per frame per list container (TensorList copies share their
// container, which cannot change while our owner holds a reference) and
// every other dump of it costs one add_blob.

constexpr uint32_t kTensorListBlobMarker = 0xFFFFFFFFu;

struct ListMemoEntry {
  DataType element_dtype;
  int max_num_elements;
  tensorflow::PartialTensorShape element_shape;
  std::string type_name, metadata, list_blob;
  // Element buffer addresses when every element is a non-empty numeric
  // tensor (else empty): lets a list grown or shrunk by one element be
  // described from this one.
  std::vector<const void*> elements;
  // Byte offset in list_blob where each element's description starts.
  std::vector<uint32_t> offsets;
};

struct TailKey {
  const void* tail;
  size_t count;
  bool operator==(const TailKey& o) const { return tail == o.tail && count == o.count; }
};
struct TailKeyHash {
  size_t operator()(const TailKey& k) const {
    return std::hash<const void*>()(k.tail) ^ (k.count * 0x9E3779B97F4A7C15ull);
  }
};

struct ListMemo {
  uint64_t frame_id = 0;
  // Node-based: the list_blob strings keep their addresses (add_blob
  // pointers) until the next frame clears the map.
  std::unordered_map<const void*, ListMemoEntry*> entries;
  std::deque<ListMemoEntry> storage;  // stable addresses
  // Lists by (address of their last element's buffer, element count). A
  // loop that pushes one element per iteration produces states S1, S2, ...
  // in distinct containers; S(k+1) is S(k) plus one element, and the
  // gradient's pops revisit the same states in new containers.
  std::unordered_map<TailKey, ListMemoEntry*, TailKeyHash> by_tail;
  // Lists by (address of their second-to-last element, count): finds the
  // state one push ahead of a new one, i.e. the list a pop came from.
  std::unordered_map<TailKey, ListMemoEntry*, TailKeyHash> by_second_last;
  // States of list shadows (see "TensorList snapshots"), by element count.
  std::unordered_map<const void*, std::map<uint32_t, ListMemoEntry*>> by_shadow;
};

// This worker thread's memo, emptied whenever a new frame starts.
ListMemo& FrameMemo(const tfdump_encode_sink* sink) {
  thread_local ListMemo memo;
  if (memo.frame_id != sink->frame_id) {
    memo.entries.clear();
    memo.by_tail.clear();
    memo.by_second_last.clear();
    memo.by_shadow.clear();
    memo.storage.clear();
    memo.frame_id = sink->frame_id;
  }
  return memo;
}

// The element's data address when it can take part in prefix matching.
inline const void* ElementAddress(const Tensor& t) {
  if (!t.IsInitialized() || t.NumElements() == 0 || !tensorflow::DataTypeCanUseMemcpy(t.dtype())) {
    return nullptr;
  }
  return t.tensor_data().data();
}

// Whether `e` (a memo entry or a list shadow) describes lists with `tl`'s
// element dtype, maximum size and element shape.
template <typename Described>
bool SameListAttrs(const Described& e, const tensorflow::TensorList& tl) {
  return e.element_dtype == tl.element_dtype && e.max_num_elements == tl.max_num_elements &&
         e.element_shape.IsIdenticalTo(tl.element_shape);
}

// Element addresses of `tl` if all elements can be prefix-matched.
bool ElementAddresses(const tensorflow::TensorList& tl, std::vector<const void*>* out) {
  const std::vector<Tensor>& ts = tl.tensors();
  out->resize(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].dtype() == tensorflow::DT_INVALID) return false;  // metadata lists these
    (*out)[i] = ElementAddress(ts[i]);
    if ((*out)[i] == nullptr) return false;
  }
  return true;
}

// Appends the list-blob description of one element tensor and makes the
// engine store its payload.
void PutListBlobTensor(const Tensor& st, tfdump_encode_sink* sink, std::string* blob) {
  const bool init = st.IsInitialized();
  Put<int32_t>(blob, static_cast<int32_t>(st.dtype()));
  Put<uint16_t>(blob, init ? 0 : TFDUMP_FLAG_UNINITIALIZED);
  PutDims(blob, st);
  if (!init || st.NumElements() == 0) {
    Put<uint8_t>(blob, 2);
    return;
  }
  absl::string_view data = st.tensor_data();
  // add_blob makes the engine store the element (once per writer); the
  // blob references it by hash because the list blob is shared by records.
  sink->add_blob(sink, data.data(), data.size(), ShuffleElemSize(st.dtype()));
  uint8_t hash[16];
  sink->hash(sink, data.data(), data.size(), hash);
  Put<uint8_t>(blob, 0);
  blob->append(reinterpret_cast<const char*>(hash), 16);
  Put<uint64_t>(blob, static_cast<uint64_t>(data.size()));
}

// Builds the list blob of a TensorList, or returns false when an element is
// not a plain memcpy-able tensor (nested lists, strings): those lists take the
// general path.
bool BuildListBlob(const tensorflow::VariantTensorData& d, tfdump_encode_sink* sink,
                   std::string* blob, std::vector<uint32_t>* offsets) {
  const int nt = d.tensors_size();
  for (int j = 0; j < nt; ++j) {
    const Tensor& st = d.tensors(j);
    if (st.IsInitialized() && st.NumElements() > 0 &&
        !tensorflow::DataTypeCanUseMemcpy(st.dtype())) {
      return false;
    }
  }
  Put<uint32_t>(blob, static_cast<uint32_t>(nt));
  offsets->resize(nt);
  for (int j = 0; j < nt; ++j) {
    (*offsets)[j] = static_cast<uint32_t>(blob->size());
    PutListBlobTensor(d.tensors(j), sink, blob);
  }
  return true;
}

void PutListElement(const ListMemoEntry& e, tfdump_encode_sink* sink, std::string* out) {
  Put<uint32_t>(out, static_cast<uint32_t>(e.type_name.size()));
  out->append(e.type_name);
  Put<uint32_t>(out, static_cast<uint32_t>(e.metadata.size()));
  out->append(e.metadata);
  Put<uint32_t>(out, kTensorListBlobMarker);
  Put<uint32_t>(out, sink->add_blob(sink, e.list_blob.data(), e.list_blob.size(), 0));
}

// A description of `tl` derived from a state of the same list seen earlier
// in this frame: the very same elements (a pop back to an earlier state), or
// those elements plus one (a push). nullptr when there is none.
ListMemoEntry* DeriveListEntry(ListMemo& memo, const tensorflow::TensorList& tl,
                               const std::vector<const void*>& elems, tfdump_encode_sink* sink) {
  const size_t n = elems.size();
  if (n == 0) return nullptr;
  auto same = memo.by_tail.find(TailKey{elems[n - 1], n});
  if (same != memo.by_tail.end() && SameListAttrs(*same->second, tl) && same->second->elements == elems) {
    return same->second;
  }
  auto start_from = [&](const ListMemoEntry& base) -> ListMemoEntry& {
    memo.storage.emplace_back();
    ListMemoEntry& e = memo.storage.back();
    e.element_dtype = tl.element_dtype;
    e.max_num_elements = tl.max_num_elements;
    e.element_shape = tl.element_shape;
    // No invalid elements on either side, same list attributes: TensorList's
    // metadata (invalid indices, dtype, max size, element shape) is the same.
    e.type_name = base.type_name;
    e.metadata = base.metadata;
    e.elements = elems;
    return e;
  };
  const uint32_t count = static_cast<uint32_t>(n);
  // A push: the state one element shorter was seen.
  if (n >= 2) {
    auto it = memo.by_tail.find(TailKey{elems[n - 2], n - 1});
    if (it != memo.by_tail.end()) {
      const ListMemoEntry& parent = *it->second;
      if (SameListAttrs(parent, tl) && std::equal(parent.elements.begin(), parent.elements.end(), elems.begin())) {
        ListMemoEntry& e = start_from(parent);
        e.list_blob = parent.list_blob;
        memcpy(&e.list_blob[0], &count, sizeof(count));
        e.offsets = parent.offsets;
        e.offsets.push_back(static_cast<uint32_t>(e.list_blob.size()));
        PutListBlobTensor(tl.tensors()[n - 1], sink, &e.list_blob);
        return &e;
      }
    }
  }
  // A pop: the state one element longer was seen.
  auto it = memo.by_second_last.find(TailKey{elems[n - 1], n + 1});
  if (it != memo.by_second_last.end()) {
    const ListMemoEntry& child = *it->second;
    if (SameListAttrs(child, tl) && std::equal(elems.begin(), elems.end(), child.elements.begin())) {
      ListMemoEntry& e = start_from(child);
      e.list_blob.assign(child.list_blob, 0, child.offsets[n]);
      memcpy(&e.list_blob[0], &count, sizeof(count));
      e.offsets.assign(child.offsets.begin(), child.offsets.begin() + n);
      return &e;
    }
  }
  return nullptr;
}

// Encodes element `v` if it is a TensorList that can use a list blob.
bool EncodeTensorListElement(const tensorflow::Variant& v, tfdump_encode_sink* sink,
                             std::string* out) {
  const tensorflow::TensorList* tl = v.get<tensorflow::TensorList>();
  if (tl == nullptr) return false;
  ListMemo& memo = FrameMemo(sink);
  const void* container = &tl->tensors();
  auto it = memo.entries.find(container);
  if (it != memo.entries.end() && SameListAttrs(*it->second, *tl)) {
    PutListElement(*it->second, sink, out);
    return true;
  }
  thread_local std::vector<const void*> elems;
  const bool matchable = ElementAddresses(*tl, &elems);
  ListMemoEntry* e = matchable ? DeriveListEntry(memo, *tl, elems, sink) : nullptr;
  if (e == nullptr) {
    // No earlier state to start from: TensorList::Encode gives the exact
    // metadata and tensor set tfdbg would serialize.
    tensorflow::VariantTensorData d;
    v.Encode(&d);
    memo.storage.emplace_back();
    e = &memo.storage.back();
    if (!BuildListBlob(d, sink, &e->list_blob, &e->offsets)) {
      memo.storage.pop_back();
      return false;
    }
    e->element_dtype = tl->element_dtype;
    e->max_num_elements = tl->max_num_elements;
    e->element_shape = tl->element_shape;
    e->type_name = d.type_name();
    e->metadata = d.metadata_string();
    if (matchable) e->elements = elems;
  }
  if (it == memo.entries.end()) memo.entries.emplace(container, e);
  const size_t count = e->elements.size();
  if (count > 0) memo.by_tail.emplace(TailKey{e->elements.back(), count}, e);
  if (count > 1) memo.by_second_last.emplace(TailKey{e->elements[count - 2], count}, e);
  PutListElement(*e, sink, out);
  return true;
}

// ---------------------------------------------------------------------------
// TensorList snapshots, taken on the TF thread.
//
// Keeping a dumped TensorList alive (even a copy: TensorList copies share
// their element container) keeps the container's reference count above one,
// and TF's list kernels then copy the whole container on the next push or
// pop instead of changing it in place (ForwardInputOrCreateNewList): O(n) per
// loop iteration, measured at +3 ms per step of the 200-iteration loop in
// Tensor copies and destructions on TF's threads. So for a plain list (every
// element an initialized, non-empty, memcpy-able tensor) the bridge keeps no
// list. It keeps a shadow of the container instead -- references to the
// element tensors, append-only -- and the record names (shadow, element
// count). Each dump is compared element by element with the container's
// shadow (buffer address, dtype, shape; the shadow's references keep its
// buffers from being reused by other tensors), so whatever TF changed in
// place (push, pop, set item) is described exactly: a difference inside the
// common prefix starts a new shadow.

class ListShadow;

// The element count of one dumped list state: the owner of its record. The
// handles live in their shadow, one per count, so a record costs no
// allocation on TF's thread (and no free of TF-thread memory on a worker's).
struct ListSnapshot {
  ListShadow* shadow;
  uint32_t count;
};

class ListShadow {
 public:
  static constexpr size_t kBlockBits = 8;
  static constexpr size_t kBlockSize = size_t(1) << kBlockBits;
  static constexpr size_t kMaxBlocks = 1024;  // lists longer than 262,144 take the general path
  static constexpr size_t kMaxElems = kBlockSize * kMaxBlocks;

  ListShadow(DataType element_dtype, int max_num_elements, const tensorflow::PartialTensorShape& element_shape,
             std::string type_name, std::string metadata)
      : element_dtype(element_dtype),
        max_num_elements(max_num_elements),
        element_shape(element_shape),
        type_name(std::move(type_name)),
        metadata(std::move(metadata)),
        blocks_(new std::unique_ptr<Tensor[]>[kMaxBlocks]),
        handles_(new std::unique_ptr<ListSnapshot[]>[kMaxBlocks]) {}

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // Element i < a count this shadow had when a record was taken. The block
  // table never moves, so workers read while TF threads append.
  const Tensor& at(size_t i) const { return blocks_[i >> kBlockBits][i & (kBlockSize - 1)]; }
  // Under the registry lock.
  size_t size() const { return size_; }
  void Append(const Tensor& t) {  // throws std::bad_alloc; size() < kMaxElems
    std::unique_ptr<Tensor[]>& block = blocks_[size_ >> kBlockBits];
    if (!block) block.reset(new Tensor[kBlockSize]);
    block[size_ & (kBlockSize - 1)] = t;
    ++size_;
  }
  // A new reference to this shadow as the state with n < kMaxElems elements.
  // Under the registry lock; throws std::bad_alloc.
  ListSnapshot* Snapshot(size_t n) {
    std::unique_ptr<ListSnapshot[]>& block = handles_[n >> kBlockBits];
    if (!block) {
      block.reset(new ListSnapshot[kBlockSize]);
      const size_t base = n & ~(kBlockSize - 1);
      for (size_t i = 0; i < kBlockSize; ++i) block[i] = ListSnapshot{this, static_cast<uint32_t>(base + i)};
    }
    Ref();
    return &block[n & (kBlockSize - 1)];
  }
  // Length of the prefix of ts[0, n) that this shadow holds (n <= size()).
  // A shadow Tensor was copied from the list's own Tensor object, and a copy
  // reproduces the object bytes (shape representation, buffer pointer), so
  // whole runs of elements compare with one memcmp; the shadow's references
  // keep its buffers from being reused by other tensors. Where bytes differ
  // (e.g. an out-of-line shape), the exact per-element test decides.
  size_t CommonPrefix(const std::vector<Tensor>& ts, size_t n) const {
    size_t i = 0;
    while (i < n) {
      const size_t in_block = std::min(n - i, kBlockSize - (i & (kBlockSize - 1)));
      const Tensor* mine = &at(i);
      if (memcmp(static_cast<const void*>(mine), static_cast<const void*>(&ts[i]), in_block * sizeof(Tensor)) != 0) {
        for (size_t j = 0; j < in_block; ++j) {
          if (!SameElement(mine[j], ts[i + j])) return i + j;
        }
      }
      i += in_block;
    }
    return n;
  }
  const DataType element_dtype;
  const int max_num_elements;
  const tensorflow::PartialTensorShape element_shape;
  // What Variant::Encode gives a list with these attributes and no invalid
  // elements (TensorList::Encode's metadata depends on nothing else).
  const std::string type_name, metadata;

 private:
  ~ListShadow() = default;
  static bool SameElement(const Tensor& a, const Tensor& b) {
    if (memcmp(static_cast<const void*>(&a), static_cast<const void*>(&b), sizeof(Tensor)) == 0) return true;
    return a.data() == b.data() && a.dtype() == b.dtype() && a.shape().IsSameSize(b.shape());
  }
  std::atomic<int> refs_{1};
  size_t size_ = 0;
  std::unique_ptr<std::unique_ptr<Tensor[]>[]> blocks_;
  std::unique_ptr<std::unique_ptr<ListSnapshot[]>[]> handles_;
};

void ReleaseListSnapshot(void* owner) {
  // The handle lives in its shadow; the record's reference kept both alive.
  static_cast<ListSnapshot*>(owner)->shadow->Unref();
}

// One per run (bound slot): shadows by container address.
class ListRegistry {
 public:
  ~ListRegistry() { Clear(); }
  std::mutex mu;
  std::unordered_map<const void*, ListShadow*> by_container;
  size_t elements = 0;  // held by the shadows in the map
  void Clear() {
    for (auto& kv : by_container) kv.second->Unref();
    by_container.clear();
    elements = 0;
  }
};

ListRegistry* NewListRegistry() { return new (std::nothrow) ListRegistry(); }
void DeleteListRegistry(ListRegistry* r) { delete r; }

// Past this many element references the registry starts over, so a long run
// that creates many lists does not hold every element it ever saw (records
// keep what they need).
constexpr size_t kRegistryMaxElements = size_t(1) << 20;

// An element a list blob can describe: what ElementAddress accepts, and not
// one of the invalid placeholders of a reserved list.
inline bool PlainElement(const Tensor& t) {
  return t.dtype() != tensorflow::DT_INVALID && ElementAddress(t) != nullptr;
}

// Type name and metadata of a plain list with `tl`'s attributes.
void ListHeader(const tensorflow::TensorList& tl, std::string* type_name, std::string* metadata) {
  tensorflow::TensorList empty;
  empty.element_dtype = tl.element_dtype;
  empty.max_num_elements = tl.max_num_elements;
  empty.element_shape = tl.element_shape;
  tensorflow::Variant v = std::move(empty);
  tensorflow::VariantTensorData d;
  v.Encode(&d);
  *type_name = d.type_name();
  *metadata = d.metadata_string();
}

// The snapshot of `tl` as it is now, or nullptr when the list is not plain
// (the caller then keeps the whole variant tensor). Never throws.
ListSnapshot* SnapshotList(ListRegistry& reg, const tensorflow::TensorList& tl) noexcept {
  try {
    const std::vector<Tensor>& ts = tl.tensors();
    const size_t n = ts.size();
    if (n >= ListShadow::kMaxElems) return nullptr;
    std::lock_guard<std::mutex> lk(reg.mu);
    auto it = reg.by_container.find(&ts);
    ListShadow* shadow = it != reg.by_container.end() ? it->second : nullptr;
    size_t common = 0;
    if (shadow != nullptr && SameListAttrs(*shadow, tl)) {
      const size_t m = std::min(n, shadow->size());
      common = shadow->CommonPrefix(ts, m);
      if (common == m) {
        // Unchanged, popped, or pushed: append what is new.
        for (size_t i = m; i < n; ++i) {
          if (!PlainElement(ts[i])) return nullptr;
        }
        for (size_t i = m; i < n; ++i) shadow->Append(ts[i]);
        reg.elements += n - m;
        return shadow->Snapshot(n);
      }
    } else {
      shadow = nullptr;  // new container, or its attributes changed
    }
    for (size_t i = common; i < n; ++i) {
      if (!PlainElement(ts[i])) return nullptr;
    }
    std::string type_name, metadata;
    if (shadow != nullptr) {
      type_name = shadow->type_name;
      metadata = shadow->metadata;
    } else {
      ListHeader(tl, &type_name, &metadata);
    }
    ListShadow* fresh = new ListShadow(tl.element_dtype, tl.max_num_elements, tl.element_shape,
                                       std::move(type_name), std::move(metadata));
    try {
      for (size_t i = 0; i < common; ++i) fresh->Append(shadow->at(i));
      for (size_t i = common; i < n; ++i) fresh->Append(ts[i]);
    } catch (...) {
      fresh->Unref();
      return nullptr;
    }
    if (reg.elements + n > kRegistryMaxElements) reg.Clear();
    auto slot = reg.by_container.find(&ts);
    if (slot != reg.by_container.end()) {
      reg.elements -= std::min(reg.elements, slot->second->size());
      slot->second->Unref();
      slot->second = fresh;
    } else {
      reg.by_container.emplace(&ts, fresh);
    }
    reg.elements += n;
    return fresh->Snapshot(n);
  } catch (...) {
    return nullptr;
  }
}

// The list-blob description of a snapshot, derived when possible from a
// state of the same shadow described earlier in this frame.
const ListMemoEntry* ShadowEntry(const ListSnapshot& snap, tfdump_encode_sink* sink) {
  ListMemo& memo = FrameMemo(sink);
  std::map<uint32_t, ListMemoEntry*>& states = memo.by_shadow[snap.shadow];
  const uint32_t n = snap.count;
  auto found = states.find(n);
  if (found != states.end()) return found->second;
  const ListShadow& sh = *snap.shadow;
  memo.storage.emplace_back();
  ListMemoEntry& e = memo.storage.back();
  e.type_name = sh.type_name;
  e.metadata = sh.metadata;
  auto above = states.upper_bound(n);
  if (above != states.end()) {
    // A pop: a longer state of the same shadow starts with our elements.
    const ListMemoEntry& child = *above->second;
    e.list_blob.assign(child.list_blob, 0, child.offsets[n]);
    e.offsets.assign(child.offsets.begin(), child.offsets.begin() + n);
  } else {
    uint32_t from = 0;
    if (above != states.begin()) {
      // A push: a shorter state plus the elements after it.
      const ListMemoEntry& parent = *std::prev(above)->second;
      e.list_blob = parent.list_blob;
      e.offsets = parent.offsets;
      from = std::prev(above)->first;
    } else {
      Put<uint32_t>(&e.list_blob, 0);
    }
    e.offsets.reserve(n);
    for (uint32_t i = from; i < n; ++i) {
      e.offsets.push_back(static_cast<uint32_t>(e.list_blob.size()));
      PutListBlobTensor(sh.at(i), sink, &e.list_blob);
    }
  }
  memcpy(&e.list_blob[0], &n, sizeof(n));
  states.emplace(n, &e);
  return &e;
}

int EncodeListSnapshotRecord(void* owner, tfdump_encode_sink* sink) {
  try {
    const ListSnapshot* snap = static_cast<const ListSnapshot*>(owner);
    thread_local std::string out;
    out.clear();
    Put<uint64_t>(&out, 1);  // one Variant element
    PutListElement(*ShadowEntry(*snap, sink), sink, &out);
    sink->append(sink, out.data(), out.size());
    return 0;
  } catch (...) {
    return 1;
  }
}

// Variant structure (FORMAT.md) of every element of a DT_VARIANT tensor.
void EncodeVariantElements(const Tensor& t, VariantOwner* owner,
                           tfdump_encode_sink* sink, std::string* out) {
  const int64_t n = t.NumElements();
  const tensorflow::Variant* v =
      static_cast<const tensorflow::Variant*>(t.data());
  Put<uint64_t>(out, static_cast<uint64_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (EncodeTensorListElement(v[i], sink, out)) continue;
    owner->keep.emplace_back(new tensorflow::VariantTensorData());
    tensorflow::VariantTensorData* d = owner->keep.back().get();
    // An empty Variant encodes nothing: type_name "", no metadata, no
    // tensors -- exactly what Tensor::AsProtoTensorContent records for it.
    v[i].Encode(d);
    const std::string& type_name = d->type_name();
    const std::string& meta = d->metadata_string();
    Put<uint32_t>(out, static_cast<uint32_t>(type_name.size()));
    out->append(type_name);
    Put<uint32_t>(out, static_cast<uint32_t>(meta.size()));
    out->append(meta);
    const int nt = d->tensors_size();
    Put<uint32_t>(out, static_cast<uint32_t>(nt));
    for (int j = 0; j < nt; ++j) EncodeSubTensor(d->tensors(j), owner, sink, out);
  }
}

// Deferred encoders: run on a writer worker thread, never on a TF thread.

int EncodeStringRecord(void* owner, tfdump_encode_sink* sink) {
  try {
    SinkWriter w(sink);
    EncodeStrings(*static_cast<Tensor*>(owner), &w);
    return 0;
  } catch (...) {
    return 1;
  }
}

int EncodeResourceRecord(void* owner, tfdump_encode_sink* sink) {
  try {
    SinkWriter w(sink);
    EncodeResources(*static_cast<Tensor*>(owner), &w);
    return 0;
  } catch (...) {
    return 1;
  }
}

int EncodeVariantRecord(void* owner, tfdump_encode_sink* sink) {
  try {
    VariantOwner* vo = static_cast<VariantOwner*>(owner);
    std::string out;
    EncodeVariantElements(vo->tensor, vo, sink, &out);
    sink->append(sink, out.data(), out.size());
    return 0;
  } catch (...) {
    return 1;
  }
}

// Bytes charged for a variant record: the Variant objects themselves. The
// tensors inside (e.g. a TensorList's element buffers) are deliberately not
// charged: they are shared, immutable buffers of TF's live lists, and inside
// a while loop the same buffers appear in every iteration's dump of the
// growing list (measured: ~480k element references to only 600 distinct
// buffers per step of a 200-iteration loop with gradient), so charging them
// per record would overstate the memory held by orders of magnitude and
// throttle capture for nothing.
uint64_t VariantChargeBytes(const Tensor& t) { return t.TotalBytes(); }

// Strings whose whole encoding is below this many bytes and whose tensor has
// at most this many elements are encoded right away on the TF thread (then
// copied by the engine): cheaper than a deferred record, and a string held in
// a legacy ref variable can be overwritten in place by a later Assign (its
// Copy node forwards rather than copies non-memcpy dtypes).
constexpr int64_t kInlineStringMaxElems = 64;

// Returns a TFDUMP_SUBMIT_* code.
int Forward(const Binding& b, const DebugNodeKey& k, const Tensor& t) {
  const tfdump_engine_api* api = b.api;
  tfdump_tensor_in in;
  memset(&in, 0, sizeof(in));
  in.run_id = b.run_id;
  in.key_id = InternKey(b, k);
  const DataType dt = t.dtype();
  in.dtype = static_cast<int32_t>(dt);

  int64_t dims[kMaxDims];
  const int nd = t.dims();
  in.ndims = nd;
  for (int i = 0; i < nd && i < kMaxDims; ++i) dims[i] = t.dim_size(i);
  in.dims = dims;

  if (!t.IsInitialized()) {
    // E.g. a variable read before its initializer ran. No payload; note
    // TotalBytes() would CHECK-fail on such a tensor.
    in.flags = TFDUMP_FLAG_UNINITIALIZED;
    return api->submit(api->engine, &in);
  }

  if (tensorflow::DataTypeCanUseMemcpy(dt)) {
    // The Copy node tfdbg inserts before the debug op made a private deep
    // copy, so referencing its buffer is safe and zero-copy.
    absl::string_view data = t.tensor_data();
    in.elem_size = ShuffleElemSize(dt);
    in.size = data.size();
    if (data.empty()) return api->submit(api->engine, &in);
    in.data = data.data();
    if (data.size() >= api->zero_copy_threshold) {
      in.owner = new Tensor(t);
      in.release = ReleaseTensor;
    }
    // else: owner NULL, the engine copies the bytes before returning.
    return api->submit(api->engine, &in);
  }

  switch (dt) {
    case tensorflow::DT_STRING: {
      in.flags = TFDUMP_FLAG_STRING;
      const int64_t n = t.NumElements();
      if (n <= kInlineStringMaxElems) {
        const tensorflow::tstring* v =
            static_cast<const tensorflow::tstring*>(t.data());
        uint64_t total = 8 + 8 * static_cast<uint64_t>(n);
        for (int64_t i = 0; i < n; ++i) total += v[i].size();
        if (total < api->zero_copy_threshold) {
          thread_local std::string buf;
          buf.clear();
          StringOut so{&buf};
          EncodeStrings(t, &so);
          in.data = buf.data();
          in.size = buf.size();
          return api->submit(api->engine, &in);
        }
      }
      in.encode = EncodeStringRecord;
      in.owner = new Tensor(t);
      in.release = ReleaseTensor;
      in.charge_bytes = t.TotalBytes();
      return api->submit(api->engine, &in);
    }
    case tensorflow::DT_RESOURCE: {
      in.flags = TFDUMP_FLAG_RESOURCE;
      in.encode = EncodeResourceRecord;
      in.owner = new Tensor(t);
      in.release = ReleaseTensor;
      in.charge_bytes = t.TotalBytes();
      return api->submit(api->engine, &in);
    }
    case tensorflow::DT_VARIANT: {
      in.flags = TFDUMP_FLAG_VARIANT;
      in.charge_bytes = VariantChargeBytes(t);
      if (b.lists != nullptr && t.NumElements() == 1) {
        const tensorflow::TensorList* tl =
            static_cast<const tensorflow::Variant*>(t.data())->get<tensorflow::TensorList>();
        ListSnapshot* snap = tl != nullptr ? SnapshotList(*b.lists, *tl) : nullptr;
        if (snap != nullptr) {
          in.encode = EncodeListSnapshotRecord;
          in.owner = snap;
          in.release = ReleaseListSnapshot;
          return api->submit(api->engine, &in);
        }
      }
      in.encode = EncodeVariantRecord;
      VariantOwner* vo = new VariantOwner();
      vo->tensor = t;
      in.owner = vo;
      in.release = ReleaseVariantOwner;
      return api->submit(api->engine, &in);
    }
    default:
      // Not reachable with today's dtypes; never hand the engine a payload
      // we cannot describe.
      return -1;
  }
}

// The memcbk callback of slot `slot_index`, on a TF executor thread.
void OnTensor(int slot_index, const DebugNodeKey& k, const Tensor& t) noexcept {
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
      int rc = Forward(*b, k, t);
      if (rc == TFDUMP_SUBMIT_OK || rc == TFDUMP_SUBMIT_DROPPED) {
        Bump(st->forwarded);  // dropped ones are counted by the engine
      } else if (rc == TFDUMP_SUBMIT_BAD_RUN) {
        Bump(st->orphaned);
      } else {
        Bump(st->failed);
      }
    } catch (...) {
      // Never let anything propagate into TensorFlow's executor.
      Bump(st->failed);
    }
  }
  s.inflight.fetch_sub(1, std::memory_order_release);
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
  tfdump_bridge_stats r = {0, 0, 0};
  std::lock_guard<std::mutex> lock(g_stats_mu);
  std::vector<const ThreadStats*> all(g_all_stats->begin(), g_all_stats->end());
  all.push_back(&g_fallback_stats);
  for (const ThreadStats* s : all) {
    r.tensors_forwarded += s->forwarded.load(std::memory_order_relaxed);
    r.tensors_orphaned += s->orphaned.load(std::memory_order_relaxed);
    r.tensors_failed += s->failed.load(std::memory_order_relaxed);
  }
  *out = r;
}

const tfdump_bridge_api kApi = {
    TFDUMP_BRIDGE_API_VERSION, TFDUMP_BRIDGE_TF_VERSION, TFDUMP_TF_GIT_VERSION,
    kMaxSlots,                 AcquireSlot,              ReleaseSlot,
    GetStats,
};

}  // namespace

extern "C" TFDUMP_EXPORT const tfdump_bridge_api* tfdump_bridge_get_api(void) {
  return &kApi;
}
