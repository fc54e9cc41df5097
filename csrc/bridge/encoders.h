// Payload encoders of the TF bridge: a tensor's bytes laid out as
// docs/FORMAT.md says (string encoding, variant structure), with format.h's
// appenders. The deferred encoders (Encode*Record) run on writer worker
// threads, never on a TF thread.
#ifndef TFDUMP_BRIDGE_ENCODERS_H_
#define TFDUMP_BRIDGE_ENCODERS_H_

#include <stdint.h>

#include <memory>
#include <string>
#include <vector>

#include "engine_api.h"
#include "format.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/framework/variant_tensor_data.h"

namespace tfdump {
namespace bridge {

using tensorflow::DataType;
using tensorflow::Tensor;

// Byte width of one lane for the shuffle filter: a complex number is two
// floats, and shuffling by float lanes compresses far better.
inline uint32_t ShuffleElemSize(DataType dt) {
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

// tensor_desc of `t` up to its storage byte.
inline void AppendTensorHead(std::string* out, const Tensor& t, uint16_t flags) {
  AppendTensorDescHead(out, static_cast<int32_t>(t.dtype()), flags, t.dims(),
                       [&t](int i) { return static_cast<int64_t>(t.dim_size(i)); });
}

// The Out of EncodeStrings that appends to a std::string.
struct StringOut {
  std::string* s;
  void Append(const void* p, size_t n) {
    s->append(static_cast<const char*>(p), n);
  }
};

// String encoding of a DT_STRING tensor. Out provides
// Append(const void*, size_t).
template <typename Out>
void EncodeStrings(const Tensor& t, Out* out) {
  const tensorflow::tstring* v =
      static_cast<const tensorflow::tstring*>(t.data());
  AppendStringEncoding(
      out, static_cast<uint64_t>(t.NumElements()),
      [v](uint64_t i) { return static_cast<uint64_t>(v[i].size()); },
      [v](uint64_t i) { return static_cast<const void*>(v[i].data()); });
}

// Owner of a variant tensor while it waits for its encoder: the tensor (which
// keeps every Variant, and through a TensorList its element buffers, alive)
// plus the VariantTensorData that Encode() produced, because the blobs handed
// to add_blob point into those tensors and must stay valid until release.
struct VariantOwner {
  Tensor tensor;
  std::vector<std::unique_ptr<tensorflow::VariantTensorData>> keep;
};

// tfdump_release_fn of a `new Tensor` owner and of a `new VariantOwner`.
void ReleaseTensor(void* owner);
void ReleaseVariantOwner(void* owner);

// tfdump_encode_fn of the owners above: string encoding of a DT_STRING or
// DT_RESOURCE Tensor, variant structure of a VariantOwner.
int EncodeStringRecord(void* owner, tfdump_encode_sink* sink);
int EncodeResourceRecord(void* owner, tfdump_encode_sink* sink);
int EncodeVariantRecord(void* owner, tfdump_encode_sink* sink);

}  // namespace bridge
}  // namespace tfdump

#endif  // TFDUMP_BRIDGE_ENCODERS_H_
