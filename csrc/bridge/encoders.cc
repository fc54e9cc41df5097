// Payload encoders of the TF bridge (see encoders.h).

#include "bridge/encoders.h"

#include <stdint.h>

#include <string>
#include <vector>

#include "bridge/tensor_lists.h"
#include "format.h"
#include "tensorflow/core/framework/resource_handle.h"
#include "tensorflow/core/framework/resource_handle.pb.h"
#include "tensorflow/core/framework/variant.h"

namespace tfdump {
namespace bridge {
namespace {

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
  AppendStringEncoding(
      out, static_cast<uint64_t>(n),
      [&protos](uint64_t i) { return static_cast<uint64_t>(protos[i].size()); },
      [&protos](uint64_t i) { return static_cast<const void*>(protos[i].data()); });
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
    flags |= kFlagUninitialized;
  } else if (dt == tensorflow::DT_STRING) {
    flags |= kFlagString;
  } else if (dt == tensorflow::DT_RESOURCE) {
    flags |= kFlagResource;
  } else if (dt == tensorflow::DT_VARIANT) {
    flags |= kFlagVariant;
  }
  AppendTensorHead(out, st, flags);
  if (!init || st.NumElements() == 0) {
    AppendStorageNone(out);
    return;
  }
  if (tensorflow::DataTypeCanUseMemcpy(dt)) {
    absl::string_view data = st.tensor_data();
    AppendStorageBlob(out, sink->add_blob(sink, data.data(), data.size(),
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
    AppendStorageNone(out);
    return;
  }
  AppendStorageInline(out, inner);
}

// Variant structure (FORMAT.md) of every element of a DT_VARIANT tensor.
void EncodeVariantElements(const Tensor& t, VariantOwner* owner,
                           tfdump_encode_sink* sink, std::string* out) {
  const int64_t n = t.NumElements();
  const tensorflow::Variant* v =
      static_cast<const tensorflow::Variant*>(t.data());
  AppendVariantCount(out, static_cast<uint64_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (EncodeTensorListElement(v[i], sink, out)) continue;
    owner->keep.emplace_back(new tensorflow::VariantTensorData());
    tensorflow::VariantTensorData* d = owner->keep.back().get();
    // An empty Variant encodes nothing: type_name "", no metadata, no
    // tensors -- exactly what Tensor::AsProtoTensorContent records for it.
    v[i].Encode(d);
    const int nt = d->tensors_size();
    AppendVariantElementHead(out, d->type_name(), d->metadata_string(),
                             static_cast<uint32_t>(nt));
    for (int j = 0; j < nt; ++j) EncodeSubTensor(d->tensors(j), owner, sink, out);
  }
}

}  // namespace

void ReleaseTensor(void* owner) { delete static_cast<Tensor*>(owner); }

void ReleaseVariantOwner(void* owner) {
  delete static_cast<VariantOwner*>(owner);
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

}  // namespace bridge
}  // namespace tfdump
