// The cluster probe op, TfdumpProbe: which process runs a task, and whether
// that process can take tfdump-fast's capture URLs.
//
// A debug URL `memcbk://<key>` sent to a process that has no callback for
// <key> makes TensorFlow CHECK-fail (abort) there, so before a debugged run
// watches a node on another task, the client asks that task with this op
// (src/tfdump_fast/cluster.py). It is registered by every process that has
// loaded this library (static registration at dlopen) and in no other: on a
// task whose process lacks it the probe's Session.run fails with an ordinary
// "Op type not registered" / "no OpKernel" error, which the client reads as
// "not covered". Its output, a string scalar:
//
//   "tfdump-probe/1 token=<16 hex> served=<0|1> device=<device name>"
//
// token: random per process (drawn at load), so the client can tell its own
// process from others; served: whether tfdump_fast.serve() registered the
// served-capture callback (kServedCallbackKey) in that process; device: the
// device that ran the op (for an op without a device: where the master
// places unassigned ops). Stateful, so no graph optimizer folds it into a
// constant computed elsewhere.

#include <stdint.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>

#include "tensorflow/core/debug/debug_callback_registry.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/tensor.h"

#include "bridge/probe.h"

namespace tfdump {
namespace bridge {

namespace {

uint64_t DrawToken() {
  std::random_device rd;
  uint64_t t = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  t ^= static_cast<uint64_t>(getpid()) << 17;
  t ^= static_cast<uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  return t;
}

const uint64_t kProcessToken = DrawToken();

std::string Hex16(uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i) {
    s[i] = digits[v & 0xf];
    v >>= 4;
  }
  return s;
}

class TfdumpProbeOp : public tensorflow::OpKernel {
 public:
  explicit TfdumpProbeOp(tensorflow::OpKernelConstruction* ctx)
      : OpKernel(ctx) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tensorflow::TensorShape({}),
                                             &out));
    const bool served =
        tensorflow::DebugCallbackRegistry::singleton()->GetCallback(
            kServedCallbackKey) != nullptr;
    out->scalar<tensorflow::tstring>()() =
        std::string("tfdump-probe/1 token=") + Hex16(kProcessToken) +
        " served=" + (served ? "1" : "0") + " device=" + ctx->device()->name();
  }
};

}  // namespace

REGISTER_OP("TfdumpProbe")
    .Output("report: string")
    .SetIsStateful()
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc("tfdump-fast's cluster probe: this process's token and capture state.");

REGISTER_KERNEL_BUILDER(Name("TfdumpProbe").Device(tensorflow::DEVICE_CPU),
                        TfdumpProbeOp);

}  // namespace bridge
}  // namespace tfdump
