// Registration of the bridge's debug ops (TfdumpIdentity in served.cc, the
// summary ops in summary_ops.cc): the interface TF's debug node inserter
// fills for any debug op (BaseDebugOp's attributes), and the kernels for CPU
// and for GPU, where the op reads its input from host memory as TF's own
// DebugIdentity GPU kernel does (TF inserts the device-to-host copy): a watch
// of a node placed on a GPU must not fail the run for want of a kernel.
// Plain registrations; nothing here needs CUDA.
#ifndef TFDUMP_BRIDGE_DEBUG_OP_DEF_H_
#define TFDUMP_BRIDGE_DEBUG_OP_DEF_H_

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"

// REGISTER_OP(NAME) with the debug-op interface; an op adds its own attrs
// and .Doc() after it.
#define TFDUMP_REGISTER_DEBUG_OP(NAME)                           \
  REGISTER_OP(NAME)                                              \
      .Input("input: T")                                         \
      .Output("output: T")                                       \
      .Attr("T: type")                                           \
      .Attr("device_name: string = ''")                          \
      .Attr("tensor_name: string = ''")                          \
      .Attr("debug_urls: list(string) = []")                     \
      .Attr("gated_grpc: bool = false")                          \
      .SetIsStateful()                                           \
      .SetAllowsUninitializedInput()                             \
      .SetShapeFn(tensorflow::shape_inference::UnchangedShape)

#define TFDUMP_REGISTER_DEBUG_KERNELS(NAME, KERNEL)                                     \
  REGISTER_KERNEL_BUILDER(Name(NAME).Device(tensorflow::DEVICE_CPU), KERNEL);            \
  REGISTER_KERNEL_BUILDER(                                                               \
      Name(NAME).Device(tensorflow::DEVICE_GPU).HostMemory("input").HostMemory("output"), \
      KERNEL)

#endif  // TFDUMP_BRIDGE_DEBUG_OP_DEF_H_
