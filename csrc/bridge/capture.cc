// How the TF bridge hands one captured tensor to the engine (see capture.h).
//
// Runs on TF executor threads: a few microseconds per tensor, no exceptions
// escaping (the caller catches), no blocking except inside engine->submit.

#include "bridge/capture.h"

#include <stdint.h>
#include <string.h>

#include <string>

#include "bridge/encoders.h"
#include "bridge/tensor_lists.h"
#include "format.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/framework/variant.h"

namespace tfdump {
namespace bridge {
namespace {

constexpr int kMaxDims = 256;  // TF allows at most 254

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

}  // namespace

int SubmitTensor(const tfdump_engine_api* api, uint32_t run_id, uint32_t key_id, ListRegistry* lists,
                 const Tensor& t) {
  tfdump_tensor_in in;
  memset(&in, 0, sizeof(in));
  in.run_id = run_id;
  in.key_id = key_id;
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
    in.flags = kFlagUninitialized;
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
      in.flags = kFlagString;
      const int64_t n = t.NumElements();
      if (n <= kInlineStringMaxElems) {
        const tensorflow::tstring* v =
            static_cast<const tensorflow::tstring*>(t.data());
        uint64_t bytes = 0;
        for (int64_t i = 0; i < n; ++i) bytes += v[i].size();
        if (StringEncodingSize(static_cast<uint64_t>(n), bytes) < api->zero_copy_threshold) {
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
      in.flags = kFlagResource;
      in.encode = EncodeResourceRecord;
      in.owner = new Tensor(t);
      in.release = ReleaseTensor;
      in.charge_bytes = t.TotalBytes();
      return api->submit(api->engine, &in);
    }
    case tensorflow::DT_VARIANT: {
      in.flags = kFlagVariant;
      in.charge_bytes = VariantChargeBytes(t);
      if (lists != nullptr && t.NumElements() == 1) {
        const tensorflow::TensorList* tl =
            static_cast<const tensorflow::Variant*>(t.data())->get<tensorflow::TensorList>();
        ListSnapshot* snap = tl != nullptr ? SnapshotList(*lists, *tl) : nullptr;
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


}  // namespace bridge
}  // namespace tfdump
