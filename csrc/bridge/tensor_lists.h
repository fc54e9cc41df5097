// TensorLists in the TF bridge: how dumped lists are kept (shadows, on TF's
// threads) and described (list blobs, once per frame, on writer workers).
// See tensor_lists.cc for why.
#ifndef TFDUMP_BRIDGE_TENSOR_LISTS_H_
#define TFDUMP_BRIDGE_TENSOR_LISTS_H_

#include <string>

#include "engine_api.h"
#include "tensorflow/core/framework/variant.h"
#include "tensorflow/core/kernels/tensor_list.h"

namespace tfdump {
namespace bridge {

// Shadows of the TensorLists one run dumped (one registry per bound slot).
class ListRegistry;
ListRegistry* NewListRegistry();  // nullptr when out of memory
void DeleteListRegistry(ListRegistry* r);

// One dumped list state: the owner of its record.
struct ListSnapshot;

// On the TF thread: the snapshot of `tl` as it is now, or nullptr when the
// list is not plain (the caller then keeps the whole variant tensor). Never
// throws.
ListSnapshot* SnapshotList(ListRegistry& reg, const tensorflow::TensorList& tl) noexcept;
// tfdump_encode_fn and tfdump_release_fn of a ListSnapshot owner.
int EncodeListSnapshotRecord(void* owner, tfdump_encode_sink* sink);
void ReleaseListSnapshot(void* owner);

// On a writer worker: appends variant element `v` to a variant structure as
// a list blob reference if it is a TensorList that can use one; false (and
// nothing appended) otherwise.
bool EncodeTensorListElement(const tensorflow::Variant& v, tfdump_encode_sink* sink,
                             std::string* out);

}  // namespace bridge
}  // namespace tfdump

#endif  // TFDUMP_BRIDGE_TENSOR_LISTS_H_
