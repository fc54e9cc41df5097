// How the TF bridge hands one captured tensor to the engine, on the TF
// thread: numeric tensors by reference (or copied when small), strings
// encoded at once or deferred, resources and variants through deferred
// encoders, plain TensorLists as snapshots.
#ifndef TFDUMP_BRIDGE_CAPTURE_H_
#define TFDUMP_BRIDGE_CAPTURE_H_

#include <stdint.h>

#include "bridge/tensor_lists.h"
#include "engine_api.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfdump {
namespace bridge {

// Submits `t` as one record of run `run_id` under key `key_id`. `lists` (may
// be null) keeps the shadows of the run's TensorLists. Returns the engine's
// TFDUMP_SUBMIT_* code, or -1 for a tensor that cannot be described.
int SubmitTensor(const tfdump_engine_api* api, uint32_t run_id, uint32_t key_id, ListRegistry* lists,
                 const tensorflow::Tensor& t);

}  // namespace bridge
}  // namespace tfdump

#endif  // TFDUMP_BRIDGE_CAPTURE_H_
