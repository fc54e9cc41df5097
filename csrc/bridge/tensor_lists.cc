// TensorLists in the TF bridge (see tensor_lists.h): list blobs, described
// once per frame on writer workers, and list shadows, kept on TF's threads.

#include "bridge/tensor_lists.h"

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "bridge/encoders.h"
#include "format.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/variant_tensor_data.h"

namespace tfdump {
namespace bridge {
namespace {

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
  AppendTensorHead(blob, st, init ? 0 : kFlagUninitialized);
  if (!init || st.NumElements() == 0) {
    AppendStorageNone(blob);
    return;
  }
  absl::string_view data = st.tensor_data();
  // add_blob makes the engine store the element (once per writer); the
  // blob references it by hash because the list blob is shared by records.
  sink->add_blob(sink, data.data(), data.size(), ShuffleElemSize(st.dtype()));
  uint8_t hash[16];
  sink->hash(sink, data.data(), data.size(), hash);
  AppendListBlobStorage(blob, hash, static_cast<uint64_t>(data.size()));
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
  AppendListBlobCount(blob, static_cast<uint32_t>(nt));
  offsets->resize(nt);
  for (int j = 0; j < nt; ++j) {
    (*offsets)[j] = static_cast<uint32_t>(blob->size());
    PutListBlobTensor(d.tensors(j), sink, blob);
  }
  return true;
}

void PutListElement(const ListMemoEntry& e, tfdump_encode_sink* sink, std::string* out) {
  AppendTensorListElement(out, e.type_name, e.metadata,
                          sink->add_blob(sink, e.list_blob.data(), e.list_blob.size(), 0));
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
        SetListBlobCount(&e.list_blob, count);
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
      SetListBlobCount(&e.list_blob, count);
      e.offsets.assign(child.offsets.begin(), child.offsets.begin() + n);
      return &e;
    }
  }
  return nullptr;
}

}  // namespace

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

namespace {

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

}  // namespace

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

namespace {

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
    e.offsets.reserve(n);
    if (above != states.begin()) {
      // A push: a shorter state plus the elements after it. Room for the new
      // elements is reserved up front (sized like the parent's last
      // element): inside a loop every state is its parent plus one element,
      // and growing an exact-size copy would allocate and copy it twice.
      const ListMemoEntry& parent = *std::prev(above)->second;
      from = std::prev(above)->first;
      const size_t last = parent.offsets.empty() ? 64 : parent.list_blob.size() - parent.offsets.back();
      e.list_blob.reserve(parent.list_blob.size() + (n - from) * last);
      e.list_blob.append(parent.list_blob);
      e.offsets.assign(parent.offsets.begin(), parent.offsets.end());
    } else {
      AppendListBlobCount(&e.list_blob, 0);
    }
    for (uint32_t i = from; i < n; ++i) {
      e.offsets.push_back(static_cast<uint32_t>(e.list_blob.size()));
      PutListBlobTensor(sh.at(i), sink, &e.list_blob);
    }
  }
  SetListBlobCount(&e.list_blob, n);
  states.emplace(n, &e);
  return &e;
}

}  // namespace

int EncodeListSnapshotRecord(void* owner, tfdump_encode_sink* sink) {
  try {
    const ListSnapshot* snap = static_cast<const ListSnapshot*>(owner);
    thread_local std::string out;
    out.clear();
    AppendVariantCount(&out, 1);  // one Variant element
    PutListElement(*ShadowEntry(*snap, sink), sink, &out);
    sink->append(sink, out.data(), out.size());
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // namespace bridge
}  // namespace tfdump
