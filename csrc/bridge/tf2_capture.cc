// TF2 capture: the TfdumpCaptureV2 op and the engine run it submits to
// (C ABI: tf2_api.h; Python side: src/tfdump_fast/tf2.py).
//
// tfdbg v2 (tf.debugging.experimental.enable_dump_debug_info) inserts a
// DebugIdentityV2 op after each op of a tf.function graph while it is traced
// (TF's op-callback mechanism) and writes protos from the kernel. We insert
// TfdumpCaptureV2 the same way; its kernel hands the tensor to the capture
// engine (bridge/capture.cc: by reference or copied, no Python), keyed
// (device, op_name, output_slot, "TfdumpCaptureV2.<context_id>"), where the
// context id names the traced graph. Eager ops' outputs go through the same
// kernel (Python executes the op eagerly on them) with the context "eager".
//
// A TF2 program has no Session.run to delimit runs, so the Python side decides
// them (one engine run per top-level function execution) and switches the one
// bound run here; a run id of 0 means "not captured" (sampled-out steps): the
// kernel then only forwards its input. Like DebugIdentityV2 the op is stateful,
// so automatic control dependencies run it although nothing consumes its
// output.
//
// tensor_debug_mode (tfdbg's enum) selects what is recorded, as
// DebugIdentityV2 records for that mode:
//   FULL_TENSOR (7)   the tensor (by reference or copied, bridge/capture.cc);
//   CURT_HEALTH (2), CONCISE_HEALTH (3), FULL_HEALTH (4), SHAPE (5)
//                     DebugNumericSummaryV2's float64 vector, computed on a
//                     writer thread from a reference to the tensor
//                     (bridge/summaries.h), element 0 = the tensor_id attr
//                     (tfdbg v2's id of the graph tensor; -1 for eager ops,
//                     as tfdbg v2);
//   NO_TENSOR (1)     an empty float32 tensor: that the op ran, no value.
// Summary and NO_TENSOR records are keyed with the mode appended to the debug
// op ("TfdumpCaptureV2.<context_id>.CURT_HEALTH"), so that readers judge them
// by their counts (tfdump_fast.summaries). A tensor a summary is not defined
// for is skipped and counted (tensors_skipped), never an error. Other modes
// are refused when the kernel is built.

#include <stdint.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

#include "bridge/capture.h"
#include "bridge/summaries.h"
#include "tf2_api.h"

#define TFDUMP_EXPORT __attribute__((visibility("default")))

namespace tfdump {
namespace bridge {
namespace {

// tensorflow.DebugEvent's TensorDebugMode values
constexpr int kNoTensor = 1;
constexpr int kCurtHealth = 2;
constexpr int kConciseHealth = 3;
constexpr int kFullHealth = 4;
constexpr int kShape = 5;
constexpr int kFullTensor = 7;

// The summary for a tfdbg mode (its records' debug op ends in
// "." + SummaryDebugOp(summary)).
bool SummaryOfMode(int mode, SummaryMode* summary) {
  switch (mode) {
    case kCurtHealth: *summary = SummaryMode::kCurtHealth; return true;
    case kConciseHealth: *summary = SummaryMode::kConciseHealth; return true;
    case kFullHealth: *summary = SummaryMode::kFullHealth; return true;
    case kShape: *summary = SummaryMode::kShape; return true;
    default: return false;
  }
}

// The bound (engine, run) is published as an epoch: a kernel registers in
// the current epoch's in-flight counter, checks the epoch did not move, and
// only then reads the binding; a switch publishes the new binding under a new
// epoch and waits until the old epoch's counter drains. Switches come from one
// Python thread at a time (serialized by switch_mu) and each waits for its
// predecessor's epoch, so two counters suffice. No lock on the per-tensor path.
struct Tf2State {
  std::mutex switch_mu;                               // serializes bind / switch / unbind
  std::atomic<uint64_t> epoch{0};
  std::atomic<int64_t> inflight[2];
  // The binding of the current epoch (written only between epochs).
  std::atomic<const tfdump_engine_api*> api{nullptr};
  std::atomic<uint32_t> run_id{0};
  std::atomic<uint32_t> generation{0};                // changes on every bind
  std::atomic<uint64_t> submitted{0}, unbound{0}, failed{0}, skipped{0};
  Tf2State() {
    inflight[0].store(0);
    inflight[1].store(0);
  }
};

Tf2State& State() {
  static Tf2State* s = new Tf2State();  // never destroyed: TF threads may outlive exit
  return *s;
}

// Publishes (api, run_id) under a new epoch and waits until no thread is left
// in the old one. Caller holds switch_mu.
void Publish(Tf2State& s, const tfdump_engine_api* api, uint32_t run_id) {
  const uint64_t old = s.epoch.load(std::memory_order_seq_cst);
  s.api.store(api, std::memory_order_seq_cst);
  s.run_id.store(run_id, std::memory_order_seq_cst);
  s.epoch.store(old + 1, std::memory_order_seq_cst);
  // submitting threads may block in the engine (backpressure): wait, do not spin hard
  while (s.inflight[old & 1].load(std::memory_order_seq_cst) != 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

class TfdumpCaptureV2Op : public tensorflow::OpKernel {
 public:
  explicit TfdumpCaptureV2Op(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string context_id;
    int64_t tensor_id = -1;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("context_id", &context_id));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("op_name", &op_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_slot", &output_slot_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("tensor_debug_mode", &mode_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("tensor_id", &tensor_id));
    debug_op_ = "TfdumpCaptureV2." + context_id;
    if (SummaryOfMode(mode_, &summary_)) {
      attrs_.tensor_id = tensor_id;
      debug_op_ += std::string(".") + SummaryDebugOp(summary_);
    } else if (mode_ == kNoTensor) {
      debug_op_ += ".NO_TENSOR";
    } else {
      OP_REQUIRES(ctx, mode_ == kFullTensor,
                  tensorflow::errors::Unimplemented(
                      "TfdumpCaptureV2: tensor_debug_mode ", mode_,
                      " is not implemented (NO_TENSOR = 1, CURT_HEALTH = 2, CONCISE_HEALTH = 3, "
                      "FULL_HEALTH = 4, SHAPE = 5, FULL_TENSOR = 7 are)"));
    }
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& input = ctx->input(0);
    ctx->set_output(0, input);
    Tf2State& s = State();
    if (s.run_id.load(std::memory_order_relaxed) == 0) {  // sampled out or unbound: cheap exit
      s.unbound.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    uint64_t e;
    for (;;) {
      e = s.epoch.load(std::memory_order_seq_cst);
      s.inflight[e & 1].fetch_add(1, std::memory_order_seq_cst);
      if (s.epoch.load(std::memory_order_seq_cst) == e) break;
      s.inflight[e & 1].fetch_sub(1, std::memory_order_seq_cst);
    }
    const tfdump_engine_api* api = s.api.load(std::memory_order_seq_cst);
    const uint32_t run_id = s.run_id.load(std::memory_order_seq_cst);
    const uint32_t generation = s.generation.load(std::memory_order_seq_cst);
    if (api == nullptr || run_id == 0) {
      s.unbound.fetch_add(1, std::memory_order_relaxed);
    } else {
      int rc = -1;
      try {
        // (generation << 32 | key): interned once per binding, no lock
        uint64_t cached = key_.load(std::memory_order_acquire);
        uint32_t key;
        if (cached >> 32 == generation && generation != 0) {
          key = static_cast<uint32_t>(cached);
        } else {
          const std::string& device = ctx->device()->name();
          key = api->intern_key(api->engine, device.data(), device.size(), op_name_.data(),
                                op_name_.size(), output_slot_, debug_op_.data(),
                                debug_op_.size());
          key_.store(static_cast<uint64_t>(generation) << 32 | key, std::memory_order_release);
        }
        if (mode_ == kFullTensor) {
          rc = SubmitTensor(api, run_id, key, nullptr, input);
        } else if (mode_ == kNoTensor) {
          rc = SubmitTensor(api, run_id, key, nullptr, EmptyFloat());
        } else {
          rc = SubmitSummary(api, run_id, key, summary_, attrs_, input);
        }
      } catch (...) {
        rc = -1;
      }
      if (rc == TFDUMP_SUBMIT_OK || rc == TFDUMP_SUBMIT_DROPPED) {
        s.submitted.fetch_add(1, std::memory_order_relaxed);
      } else if (rc == kSummarySkipped) {
        s.skipped.fetch_add(1, std::memory_order_relaxed);
      } else {
        s.failed.fetch_add(1, std::memory_order_relaxed);
      }
    }
    s.inflight[e & 1].fetch_sub(1, std::memory_order_seq_cst);
  }

  bool IsExpensive() override { return false; }

 private:
  // NO_TENSOR's record, as tfdbg v2's: float32[0] (shared, never written).
  static const tensorflow::Tensor& EmptyFloat() {
    static const tensorflow::Tensor* t =
        new tensorflow::Tensor(tensorflow::DT_FLOAT, tensorflow::TensorShape({0}));
    return *t;
  }

  std::string op_name_, debug_op_;
  int32_t output_slot_ = 0;
  int mode_ = kFullTensor;
  SummaryMode summary_ = SummaryMode::kCurtHealth;
  SummaryAttrs attrs_;
  std::atomic<uint64_t> key_{0};
};

}  // namespace

REGISTER_OP("TfdumpCaptureV2")
    .Input("input: T")
    .Output("output: T")
    .Attr("T: type")
    .Attr("context_id: string = ''")
    .Attr("op_name: string = ''")
    .Attr("output_slot: int = 0")
    .Attr("tensor_debug_mode: int = 7")
    .Attr("tensor_id: int = -1")
    .SetIsStateful()
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape)
    .Doc("tfdump-fast's TF2 capture op: forwards its input and hands it (or its summary) to the "
         "capture engine.");

REGISTER_KERNEL_BUILDER(Name("TfdumpCaptureV2").Device(tensorflow::DEVICE_CPU), TfdumpCaptureV2Op);

}  // namespace bridge
}  // namespace tfdump

extern "C" {

TFDUMP_EXPORT int tfdump_tf2_api_version(void) { return TFDUMP_TF2_API_VERSION; }

TFDUMP_EXPORT int tfdump_tf2_bind(const tfdump_engine_api* engine) {
  if (engine == nullptr || engine->api_version != TFDUMP_ENGINE_API_VERSION) return -1;
  auto& s = tfdump::bridge::State();
  std::lock_guard<std::mutex> lock(s.switch_mu);
  if (s.api.load() != nullptr) return -1;
  uint32_t g = s.generation.load() + 1;
  s.generation.store(g == 0 ? 1 : g);
  tfdump::bridge::Publish(s, engine, 0);
  return 0;
}

TFDUMP_EXPORT uint32_t tfdump_tf2_switch_run(uint32_t run_id) {
  auto& s = tfdump::bridge::State();
  std::lock_guard<std::mutex> lock(s.switch_mu);
  const tfdump_engine_api* api = s.api.load();
  const uint32_t previous = s.run_id.load();
  tfdump::bridge::Publish(s, api, api == nullptr ? 0 : run_id);
  return previous;
}

TFDUMP_EXPORT void tfdump_tf2_unbind(void) {
  auto& s = tfdump::bridge::State();
  std::lock_guard<std::mutex> lock(s.switch_mu);
  tfdump::bridge::Publish(s, nullptr, 0);
}

TFDUMP_EXPORT void tfdump_tf2_get_stats(tfdump_tf2_stats* out) {
  if (out == nullptr) return;
  auto& s = tfdump::bridge::State();
  out->tensors_submitted = s.submitted.load(std::memory_order_relaxed);
  out->tensors_unbound = s.unbound.load(std::memory_order_relaxed);
  out->tensors_failed = s.failed.load(std::memory_order_relaxed);
  out->tensors_skipped = s.skipped.load(std::memory_order_relaxed);
}

}  // extern "C"
