// The summary debug ops: TfdumpNumericSummary, TfdumpNanCount,
// TfdumpCurtHealth, TfdumpConciseHealth, TfdumpFullHealth, TfdumpShape.
//
// tfdump_fast.watches rewrites a watch's DebugNumericSummary, DebugNanCount
// and health-mode debug ops into these. TF's own DebugNumericSummary computes
// its summary inside the step (on the executor thread, before the step can
// go on) and has no kernel for variant, resource or string tensors, so a
// watch of such a tensor fails the whole step. Ours have DebugIdentity's
// attributes (TF's debug node inserter accepts any registered op with them),
// are registered for every dtype, forward their input like an identity, and
// hand the tensor by reference to the engine bound to the capture slot named
// in debug_urls: the summary is computed later on a writer thread
// (bridge/summaries.h). A tensor the summary is not defined for is skipped
// and counted, never an error.

#include <stdint.h>

#include <string>
#include <vector>

#include "bridge/debug_op_def.h"
#include "bridge/slots.h"
#include "bridge/summaries.h"
#include "tensorflow/core/debug/debug_node_key.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfdump {
namespace bridge {
namespace {

struct SubmitCtx {
  SummaryMode mode;
  const SummaryAttrs* attrs;
  const tensorflow::Tensor* tensor;
};

int SubmitFromSlot(const tfdump_engine_api* api, uint32_t run_id, uint32_t key_id, void* ctx) {
  const SubmitCtx* c = static_cast<const SubmitCtx*>(ctx);
  return SubmitSummary(api, run_id, key_id, c->mode, *c->attrs, *c->tensor);
}

template <SummaryMode kMode>
class TfdumpSummaryOp : public tensorflow::OpKernel {
 public:
  explicit TfdumpSummaryOp(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string device, tensor_name;
    std::vector<std::string> urls;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("device_name", &device));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("tensor_name", &tensor_name));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("debug_urls", &urls));
    if (kMode == SummaryMode::kNumericSummary) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr("lower_bound", &attrs_.lower_bound));
      OP_REQUIRES_OK(ctx, ctx->GetAttr("upper_bound", &attrs_.upper_bound));
      OP_REQUIRES_OK(ctx, ctx->GetAttr("mute_if_healthy", &attrs_.mute_if_healthy));
    }
    std::string node;
    int32_t output_slot = 0;
    SplitTensorName(tensor_name, &node, &output_slot);
    key_.reset(new tensorflow::DebugNodeKey(device, node, output_slot, SummaryDebugOp(kMode)));
    for (const std::string& url : urls) {
      const int s = SlotOfUrl(url);
      if (s >= 0) slots_.push_back(s);
    }
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& input = ctx->input(0);
    SubmitCtx c{kMode, &attrs_, &input};
    for (int slot : slots_) SubmitThroughSlot(slot, *key_, SubmitFromSlot, &c);
    ctx->set_output(0, input);
  }

  bool IsExpensive() override { return false; }

 private:
  SummaryAttrs attrs_;
  // Its address is the bridge's per-thread key-cache tag: stable for the
  // kernel's life.
  std::unique_ptr<tensorflow::DebugNodeKey> key_;
  std::vector<int> slots_;
};

#define TFDUMP_REGISTER_SUMMARY_OP(NAME, MODE, DOC) \
  TFDUMP_REGISTER_DEBUG_OP(NAME).Doc(DOC);         \
  TFDUMP_REGISTER_DEBUG_KERNELS(NAME, TfdumpSummaryOp<MODE>)

TFDUMP_REGISTER_DEBUG_OP("TfdumpNumericSummary")
    .Attr("lower_bound: float = -inf")
    .Attr("upper_bound: float = inf")
    .Attr("mute_if_healthy: bool = false")
    .Doc("tfdump-fast: DebugNumericSummary computed off the step.");
TFDUMP_REGISTER_DEBUG_KERNELS("TfdumpNumericSummary", TfdumpSummaryOp<SummaryMode::kNumericSummary>);

TFDUMP_REGISTER_SUMMARY_OP("TfdumpNanCount", SummaryMode::kNanCount,
                           "tfdump-fast: DebugNanCount computed off the step.");
TFDUMP_REGISTER_SUMMARY_OP("TfdumpCurtHealth", SummaryMode::kCurtHealth,
                           "tfdump-fast: DebugNumericSummaryV2 CURT_HEALTH, off the step.");
TFDUMP_REGISTER_SUMMARY_OP("TfdumpConciseHealth", SummaryMode::kConciseHealth,
                           "tfdump-fast: DebugNumericSummaryV2 CONCISE_HEALTH, off the step.");
TFDUMP_REGISTER_SUMMARY_OP("TfdumpFullHealth", SummaryMode::kFullHealth,
                           "tfdump-fast: DebugNumericSummaryV2 FULL_HEALTH, off the step.");
TFDUMP_REGISTER_SUMMARY_OP("TfdumpShape", SummaryMode::kShape,
                           "tfdump-fast: DebugNumericSummaryV2 SHAPE, off the step.");

}  // namespace
}  // namespace bridge
}  // namespace tfdump
