// Tensor summaries computed off the step: what TF's DebugNumericSummary,
// DebugNanCount and DebugNumericSummaryV2 kernels return, computed on the
// engine's writer threads from a reference to the tensor.
//
// A TF thread calls SubmitSummary(): it checks that the summary is defined
// for the tensor (else the tensor is skipped and counted, never an error),
// keeps a reference to the tensor (no copy) and hands the engine a record
// whose payload a deferred encoder computes later on a writer thread (tiny
// tensors, at most 256 elements, are summarised at once: cheaper than a
// deferred record). The record is the summary
// only, laid out exactly as TF's kernel lays out its output tensor:
//
//   kNumericSummary  float64[14 + rank], DebugNumericSummary's (tfdbg v1):
//                    is_initialized, element_count, nan, -inf, negative,
//                    zero, positive, +inf, min, max, mean, variance, dtype,
//                    rank, dims... (lower_bound / upper_bound move values
//                    into the -inf / +inf counts, as TF's kernel does)
//   kNanCount        int64[1], DebugNanCount's
//   kCurtHealth      float64[2]  }
//   kConciseHealth   float64[5]  } DebugNumericSummaryV2 with that
//   kFullHealth      float64[11] } tensor_debug_mode and output_dtype=float64
//   kShape           float64[10] }
//
// With mute_if_healthy (kNumericSummary only) a summary without nan and
// without values counted as +-inf is not written at all, as TF's kernel then
// publishes nothing (the engine reports it as a `drops` event with reason
// "muted").
//
// Threading: every function may be called from any thread. The math
// functions (ComputeSummary) are pure.
#ifndef TFDUMP_BRIDGE_SUMMARIES_H_
#define TFDUMP_BRIDGE_SUMMARIES_H_

#include <stdint.h>

#include <limits>
#include <vector>

#include "engine_api.h"
#include "tensorflow/core/framework/tensor.h"

namespace tfdump {
namespace bridge {

enum class SummaryMode : int {
  kNumericSummary = 1,
  kNanCount = 2,
  kCurtHealth = 3,
  kConciseHealth = 4,
  kFullHealth = 5,
  kShape = 6,
};

struct SummaryAttrs {
  // DebugNumericSummary's attributes (ignored by the other modes).
  float lower_bound = -std::numeric_limits<float>::infinity();
  float upper_bound = std::numeric_limits<float>::infinity();
  bool mute_if_healthy = false;
  // DebugNumericSummaryV2's tensor_id: element 0 of the v2 modes' output
  // (TF's default, -1, when the caller has no tensor id).
  int64_t tensor_id = -1;
};

// The debug op name stored in the record's key (what tfdbg names the dump
// file after): "DebugNumericSummary", "DebugNanCount", or the v2 mode's name
// ("CURT_HEALTH", "CONCISE_HEALTH", "FULL_HEALTH", "SHAPE").
const char* SummaryDebugOp(SummaryMode mode);

// Whether TF's kernel for `mode` summarises `t`: its dtype has a kernel
// (DebugNumericSummary: bool, integers, float32/64; DebugNanCount: integers,
// float16, bfloat16, float32/64; the v2 modes: bool, integers, float16,
// bfloat16, float32/64), and for the v2 modes the tensor is initialized.
// Strings, resources, variants, complex and quantized tensors are not.
bool CanSummarize(SummaryMode mode, const tensorflow::Tensor& t);

// The summary of `t` as TF's kernel computes it, in float64 (kNanCount's one
// int64 value is stored as an int64 in out_i64). `*muted` is set when
// mute_if_healthy applies. Requires CanSummarize(mode, t). Denormals are
// flushed (read as zero) meanwhile, as TF's executor does around its
// kernels, so the result is the same on any thread.
void ComputeSummary(SummaryMode mode, const SummaryAttrs& attrs, const tensorflow::Tensor& t,
                    std::vector<double>* out, int64_t* out_i64, bool* muted);

// Returns code of SubmitSummary for a tensor CanSummarize() refuses.
constexpr int kSummarySkipped = -2;

// Hands the summary of `t` to the engine as one record of run `run_id`
// under key `key_id` (whose debug op should be SummaryDebugOp(mode)); the
// summary is computed on a writer thread. Returns the engine's
// TFDUMP_SUBMIT_* code, or kSummarySkipped (counted in the stats) for a
// tensor the summary is not defined for. Never throws.
int SubmitSummary(const tfdump_engine_api* api, uint32_t run_id, uint32_t key_id, SummaryMode mode,
                  const SummaryAttrs& attrs, const tensorflow::Tensor& t) noexcept;

// Process-wide counters: summaries handed to an engine, tensors skipped
// because the summary is not defined for them, and summaries muted (healthy
// under mute_if_healthy, not written).
struct SummaryStats {
  uint64_t submitted = 0, skipped = 0, muted = 0;
};
SummaryStats GetSummaryStats();

}  // namespace bridge
}  // namespace tfdump

#endif  // TFDUMP_BRIDGE_SUMMARIES_H_
