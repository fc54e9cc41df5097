// Tensor summaries computed off the step (see summaries.h).
//
// The math follows TF's CPU kernels (tensorflow/core/kernels/debug_ops.h:
// DebugNumericSummaryOp, DebugNanCountOp, DebugNumericSummaryV2Op) step by
// step -- same element order, same double accumulators, same comparisons in
// the same types -- so the results are bit-identical, not just close.

#include "bridge/summaries.h"

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/denormal.h"

namespace tfdump {
namespace bridge {
namespace {

using tensorflow::DataType;
using tensorflow::Tensor;

std::atomic<uint64_t> g_submitted{0}, g_skipped{0}, g_muted{0};

// Tensors of at most this many elements are summarised on the TF thread
// (unless muting applies: a muted record must go through the engine so that
// the run accounts for it).
constexpr int64_t kInlineMaxElements = 256;

bool IsV2(SummaryMode m) {
  return m == SummaryMode::kCurtHealth || m == SummaryMode::kConciseHealth ||
         m == SummaryMode::kFullHealth || m == SummaryMode::kShape;
}

bool IsIntegerOrBool(DataType dt) {
  switch (dt) {
    case tensorflow::DT_BOOL:
    case tensorflow::DT_INT8:
    case tensorflow::DT_INT16:
    case tensorflow::DT_INT32:
    case tensorflow::DT_INT64:
    case tensorflow::DT_UINT8:
    case tensorflow::DT_UINT16:
    case tensorflow::DT_UINT32:
    case tensorflow::DT_UINT64:
      return true;
    default:
      return false;
  }
}

// The dtypes TF 2.x registers each kernel for on CPU.
bool KernelRegistered(SummaryMode mode, DataType dt) {
  const bool f32_64 = dt == tensorflow::DT_FLOAT || dt == tensorflow::DT_DOUBLE;
  const bool f16 = dt == tensorflow::DT_HALF || dt == tensorflow::DT_BFLOAT16;
  switch (mode) {
    case SummaryMode::kNumericSummary:
      return f32_64 || IsIntegerOrBool(dt);
    case SummaryMode::kNanCount:
      return f32_64 || f16 || (IsIntegerOrBool(dt) && dt != tensorflow::DT_BOOL);
    default:
      return f32_64 || f16 || IsIntegerOrBool(dt);
  }
}

// Bit-pattern classification of float32 / float64 elements for the counts
// that need no floating-point order (health modes, nan counts): integer ops
// only, no branches, so the compiler vectorises them. Denormals count as
// zeros, as TF's kernels see them (they run with denormals read as zero).
template <typename F>
struct FloatBits;
template <>
struct FloatBits<float> {
  using U = uint32_t;
  static constexpr U kExp = 0x7f800000u, kMinNormal = 0x00800000u;
};
template <>
struct FloatBits<double> {
  using U = uint64_t;
  static constexpr U kExp = 0x7ff0000000000000ull, kMinNormal = 0x0010000000000000ull;
};

template <typename F>
constexpr bool kBitClassified = std::is_same<F, float>::value || std::is_same<F, double>::value;

struct ClassCounts {
  int64_t neg_inf = 0, pos_inf = 0, nan = 0, neg = 0, zero = 0, pos = 0;
};

constexpr int64_t kClassBlock = 1 << 20;  // per-block counters stay far below 2^32

template <typename F>
__attribute__((optimize("O3"))) ClassCounts CountClasses(const F* data, int64_t n) {
  using U = typename FloatBits<F>::U;
  constexpr int kShift = static_cast<int>(sizeof(U) * 8 - 1);
  constexpr U kAbs = ~(U(1) << kShift), kExp = FloatBits<F>::kExp, kMin = FloatBits<F>::kMinNormal;
  ClassCounts c;
  for (int64_t start = 0; start < n; start += kClassBlock) {
    const int64_t end = std::min(n, start + kClassBlock);
    U neg_inf = 0, pos_inf = 0, nan = 0, neg = 0, zero = 0, pos = 0;
    for (int64_t i = start; i < end; ++i) {
      U u;
      memcpy(&u, data + i, sizeof(U));
      const U a = u & kAbs, sign = u >> kShift, plus = sign ^ 1;
      const U inf = static_cast<U>(a == kExp), normal = static_cast<U>(a >= kMin) & static_cast<U>(a < kExp);
      nan += static_cast<U>(a > kExp);
      neg_inf += inf & sign;
      pos_inf += inf & plus;
      zero += static_cast<U>(a < kMin);
      neg += normal & sign;
      pos += normal & plus;
    }
    c.neg_inf += neg_inf;
    c.pos_inf += pos_inf;
    c.nan += nan;
    c.neg += neg;
    c.zero += zero;
    c.pos += pos;
  }
  return c;
}

template <typename F>
__attribute__((optimize("O3"))) bool AnyNonFinite(const F* data, int64_t n) {
  using U = typename FloatBits<F>::U;
  constexpr U kAbs = ~(U(1) << (sizeof(U) * 8 - 1)), kExp = FloatBits<F>::kExp;
  for (int64_t start = 0; start < n; start += kClassBlock) {
    const int64_t end = std::min(n, start + kClassBlock);
    U bad = 0;
    for (int64_t i = start; i < end; ++i) {
      U u;
      memcpy(&u, data + i, sizeof(U));
      bad |= static_cast<U>((u & kAbs) >= kExp);
    }
    if (bad) return true;
  }
  return false;
}

// DebugNumericSummaryOp<T>::Compute, output in out[0..14+rank).
template <typename T>
void NumericSummary(const SummaryAttrs& a, const Tensor& input, std::vector<double>* out, bool* muted) {
  int64_t is_initialized = 0, element_count = 0, negative_inf_count = 0, negative_count = 0;
  int64_t zero_count = 0, positive_count = 0, positive_inf_count = 0, nan_count = 0;
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0.0;
  double mean = std::numeric_limits<double>::quiet_NaN();
  double variance = std::numeric_limits<double>::quiet_NaN();
  int64_t non_inf_nan_count = 0;
  const float lower_bound = a.lower_bound, upper_bound = a.upper_bound;  // float attrs, as TF's
  if (input.IsInitialized()) {
    is_initialized = 1;
    const T* data = input.template flat<T>().data();
    element_count = input.NumElements();
    const bool lower_custom = !Eigen::numext::isinf(lower_bound);
    const bool upper_custom = !Eigen::numext::isinf(upper_bound);
    // TF's loop, with its branches on the sign made branch-free (the same
    // counts; random signs would mispredict half the time) and the rare
    // nan / inf moved out of the way. The sum stays one sequential chain in
    // element order: that is what makes mean and variance bit-identical.
    for (int64_t i = 0; i < element_count; ++i) {
      const double x = static_cast<double>(data[i]);
      if (TF_PREDICT_FALSE(!std::isfinite(x))) {
        if (Eigen::numext::isnan(x)) {
          nan_count++;
        } else if (x < 0.0) {
          negative_inf_count++;
        } else {
          positive_inf_count++;
        }
        continue;
      }
      if (TF_PREDICT_FALSE(lower_custom || upper_custom)) {
        if (lower_custom && x <= lower_bound) {
          negative_inf_count++;
        } else if (upper_custom && x >= upper_bound) {
          positive_inf_count++;
        } else if (x < 0.0) {
          negative_count++;
        } else if (x > 0.0) {
          positive_count++;
        } else {
          zero_count++;
        }
      } else {
        negative_count += x < 0.0;
        positive_count += x > 0.0;
        zero_count += x == 0.0;
      }
      min = x < min ? x : min;
      max = x > max ? x : max;
      non_inf_nan_count++;
      sum += x;
    }
    if (non_inf_nan_count > 0) {
      mean = sum / non_inf_nan_count;
      variance = 0.0;
      for (int64_t i = 0; i < element_count; ++i) {
        const double x = static_cast<double>(data[i]);
        if (TF_PREDICT_TRUE(std::isfinite(x))) variance += (x - mean) * (x - mean);
      }
      variance /= non_inf_nan_count;
    }
  }
  const int rank = input.dims();
  out->resize(14 + rank);
  double* o = out->data();
  o[0] = static_cast<double>(is_initialized);
  o[1] = static_cast<double>(element_count);
  o[2] = static_cast<double>(nan_count);
  o[3] = static_cast<double>(negative_inf_count);
  o[4] = static_cast<double>(negative_count);
  o[5] = static_cast<double>(zero_count);
  o[6] = static_cast<double>(positive_count);
  o[7] = static_cast<double>(positive_inf_count);
  o[8] = min;
  o[9] = max;
  o[10] = mean;
  o[11] = variance;
  o[12] = static_cast<double>(input.dtype());
  o[13] = static_cast<double>(rank);
  for (int d = 0; d < rank; ++d) o[14 + d] = static_cast<double>(input.dim_size(d));
  *muted = a.mute_if_healthy && nan_count == 0 && negative_inf_count == 0 && positive_inf_count == 0;
}

// DebugNanCountOp<T>::Compute.
template <typename T>
int64_t NanCount(const Tensor& input) {
  int64_t nan_count = 0;
  if (input.IsInitialized()) {
    const T* data = input.template flat<T>().data();
    const int64_t n = input.NumElements();
    if constexpr (kBitClassified<T>) return CountClasses(data, n).nan;
    for (int64_t i = 0; i < n; ++i) {
      if (Eigen::numext::isnan(static_cast<double>(data[i]))) nan_count++;
    }
  }
  return nan_count;
}

// DebugNumericSummaryV2Op<CPUDevice, Tin, double>::Compute for the health
// and shape modes.
template <typename Tin>
void SummaryV2(SummaryMode mode, const SummaryAttrs& a, const Tensor& tensor, std::vector<double>* out) {
  using Tout = double;
  const Tin* data = tensor.template flat<Tin>().data();
  const int64_t size = tensor.NumElements();
  const Tout tensor_id = static_cast<Tout>(a.tensor_id);
  const Tout num_elem = static_cast<Tout>(size);
  switch (mode) {
    case SummaryMode::kCurtHealth: {
      int bad = 0;
      if constexpr (kBitClassified<Tin>) {
        bad = AnyNonFinite(data, size) ? 1 : 0;
      } else {
        for (int64_t i = 0; i < size; ++i) {
          if (!Eigen::numext::isfinite(data[i])) {
            bad = 1;
            break;  // the flag cannot change any more
          }
        }
      }
      *out = {tensor_id, bad ? 1.0 : 0.0};
      return;
    }
    case SummaryMode::kConciseHealth:
    case SummaryMode::kFullHealth: {
      // TF counts in Tout (++ on a double); integer counters give the same
      // values (exact below 2^53) without a chain of dependent double adds,
      // and the sign tests are branch-free.
      int64_t neg_inf = 0, pos_inf = 0, nan = 0, neg = 0, zero = 0, pos = 0;
      const bool full = mode == SummaryMode::kFullHealth;
      if constexpr (kBitClassified<Tin>) {
        const ClassCounts c = CountClasses(data, size);
        neg_inf = c.neg_inf, pos_inf = c.pos_inf, nan = c.nan, neg = c.neg, zero = c.zero, pos = c.pos;
      } else for (int64_t i = 0; i < size; ++i) {
        const Tin& y = data[i];
        if (TF_PREDICT_TRUE(Eigen::numext::isfinite(y))) {
          if (full) {
            neg += y < static_cast<Tin>(0.f);
            zero += y == static_cast<Tin>(0.f);
            pos += !(y < static_cast<Tin>(0.f)) && !(y == static_cast<Tin>(0.f));
          }
        } else if (Eigen::numext::isinf(y)) {
          if (y < static_cast<Tin>(0.f)) {
            ++neg_inf;
          } else {
            ++pos_inf;
          }
        } else if (Eigen::numext::isnan(y)) {
          ++nan;
        }
      }
      const Tout d_neg_inf = static_cast<Tout>(neg_inf), d_pos_inf = static_cast<Tout>(pos_inf);
      const Tout d_nan = static_cast<Tout>(nan);
      if (!full) {
        *out = {tensor_id, num_elem, d_neg_inf, d_pos_inf, d_nan};
      } else {
        *out = {tensor_id, -1.0, static_cast<Tout>(tensor.dtype()), static_cast<Tout>(tensor.dims()),
                num_elem, d_neg_inf, d_pos_inf, d_nan, static_cast<Tout>(neg), static_cast<Tout>(zero),
                static_cast<Tout>(pos)};
      }
      return;
    }
    case SummaryMode::kShape: {
      constexpr int kShapeDims = 6;
      const int num_dims = tensor.dims();
      out->assign(10, 0.0);
      (*out)[0] = tensor_id;
      (*out)[1] = static_cast<Tout>(tensor.dtype());
      (*out)[2] = static_cast<Tout>(num_dims);
      (*out)[3] = num_elem;
      // Up to the last 6 dims, right-padded with zeros.
      int k = 4;
      for (int i = std::max(0, num_dims - kShapeDims); i < num_dims; ++i) {
        (*out)[k++] = static_cast<Tout>(tensor.dim_size(i));
      }
      return;
    }
    default:
      out->clear();
  }
}

#define TFDUMP_SUMMARY_CASE(DT, T, CALL) \
  case tensorflow::DT: {                 \
    using Type = T;                      \
    CALL;                                \
    break;                               \
  }

// Calls CALL with `Type` bound to the C++ type of `dt` (numeric dtypes and
// bool only).
#define TFDUMP_SUMMARY_DISPATCH(dt, CALL)                         \
  switch (dt) {                                                   \
    TFDUMP_SUMMARY_CASE(DT_BOOL, bool, CALL)                      \
    TFDUMP_SUMMARY_CASE(DT_INT8, int8_t, CALL)                    \
    TFDUMP_SUMMARY_CASE(DT_INT16, int16_t, CALL)                  \
    TFDUMP_SUMMARY_CASE(DT_INT32, int32_t, CALL)                  \
    TFDUMP_SUMMARY_CASE(DT_INT64, int64_t, CALL)                  \
    TFDUMP_SUMMARY_CASE(DT_UINT8, uint8_t, CALL)                  \
    TFDUMP_SUMMARY_CASE(DT_UINT16, uint16_t, CALL)                \
    TFDUMP_SUMMARY_CASE(DT_UINT32, uint32_t, CALL)                \
    TFDUMP_SUMMARY_CASE(DT_UINT64, uint64_t, CALL)                \
    TFDUMP_SUMMARY_CASE(DT_HALF, Eigen::half, CALL)               \
    TFDUMP_SUMMARY_CASE(DT_BFLOAT16, Eigen::bfloat16, CALL)       \
    TFDUMP_SUMMARY_CASE(DT_FLOAT, float, CALL)                    \
    TFDUMP_SUMMARY_CASE(DT_DOUBLE, double, CALL)                  \
    default:                                                      \
      break;                                                      \
  }

// What waits for the writer thread: a reference to the tensor (shares its
// buffer; TF's Copy node before every debug op made it private) and how to
// summarise it.
struct SummaryOwner {
  Tensor tensor;
  SummaryMode mode;
  SummaryAttrs attrs;
};

void ReleaseSummaryOwner(void* owner) { delete static_cast<SummaryOwner*>(owner); }

// tfdump_encode_fn: runs on a writer worker thread.
int EncodeSummaryRecord(void* owner, tfdump_encode_sink* sink) {
  try {
    const SummaryOwner* so = static_cast<const SummaryOwner*>(owner);
    thread_local std::vector<double> out;
    int64_t nan_count = 0;
    bool muted = false;
    ComputeSummary(so->mode, so->attrs, so->tensor, &out, &nan_count, &muted);
    if (muted) {
      g_muted.fetch_add(1, std::memory_order_relaxed);
      return TFDUMP_ENCODE_MUTED;
    }
    if (so->mode == SummaryMode::kNanCount) {
      sink->append(sink, &nan_count, sizeof(nan_count));
    } else {
      sink->append(sink, out.data(), out.size() * sizeof(double));
    }
    return TFDUMP_ENCODE_OK;
  } catch (...) {
    return TFDUMP_ENCODE_FAILED;
  }
}

}  // namespace

const char* SummaryDebugOp(SummaryMode mode) {
  switch (mode) {
    case SummaryMode::kNumericSummary:
      return "DebugNumericSummary";
    case SummaryMode::kNanCount:
      return "DebugNanCount";
    case SummaryMode::kCurtHealth:
      return "CURT_HEALTH";
    case SummaryMode::kConciseHealth:
      return "CONCISE_HEALTH";
    case SummaryMode::kFullHealth:
      return "FULL_HEALTH";
    case SummaryMode::kShape:
      return "SHAPE";
  }
  return "";
}

bool CanSummarize(SummaryMode mode, const Tensor& t) {
  if (!KernelRegistered(mode, t.dtype())) return false;
  // TF's v2 kernel reads the buffer unconditionally; v1's handle
  // uninitialized tensors (is_initialized = 0).
  return !IsV2(mode) || t.IsInitialized();
}

void ComputeSummary(SummaryMode mode, const SummaryAttrs& attrs, const Tensor& t, std::vector<double>* out,
                    int64_t* out_i64, bool* muted) {
  *muted = false;
  out->clear();
  *out_i64 = 0;
  // TF runs its kernels with denormals flushed to zero (and read as zero):
  // a subnormal float counts as a zero there, and its double is 0. The
  // writer threads must do the same to give the same bits.
  tensorflow::port::ScopedFlushDenormal flush_denormals;
  const DataType dt = t.dtype();
  switch (mode) {
    case SummaryMode::kNumericSummary:
      TFDUMP_SUMMARY_DISPATCH(dt, NumericSummary<Type>(attrs, t, out, muted))
      return;
    case SummaryMode::kNanCount:
      TFDUMP_SUMMARY_DISPATCH(dt, *out_i64 = NanCount<Type>(t))
      return;
    default:
      TFDUMP_SUMMARY_DISPATCH(dt, SummaryV2<Type>(mode, attrs, t, out))
      return;
  }
}

int SubmitSummary(const tfdump_engine_api* api, uint32_t run_id, uint32_t key_id, SummaryMode mode,
                  const SummaryAttrs& attrs, const Tensor& t) noexcept {
  try {
    if (!CanSummarize(mode, t)) {
      g_skipped.fetch_add(1, std::memory_order_relaxed);
      return kSummarySkipped;
    }
    tfdump_tensor_in in;
    memset(&in, 0, sizeof(in));
    in.run_id = run_id;
    in.key_id = key_id;
    int64_t dim;
    switch (mode) {
      case SummaryMode::kNumericSummary:
        dim = 14 + t.dims();
        break;
      case SummaryMode::kNanCount:
        dim = 1;
        break;
      case SummaryMode::kCurtHealth:
        dim = 2;
        break;
      case SummaryMode::kConciseHealth:
        dim = 5;
        break;
      case SummaryMode::kFullHealth:
        dim = 11;
        break;
      default:
        dim = 10;
    }
    in.dtype = mode == SummaryMode::kNanCount ? tensorflow::DT_INT64 : tensorflow::DT_DOUBLE;
    in.ndims = 1;
    in.dims = &dim;
    in.elem_size = 8;
    if (!attrs.mute_if_healthy && (!t.IsInitialized() || t.NumElements() <= kInlineMaxElements)) {
      // A few elements: computing now costs less than a deferred record
      // (owner, queue, encoder call); the engine copies the summary.
      thread_local std::vector<double> out;
      int64_t nan_count = 0;
      bool muted = false;
      ComputeSummary(mode, attrs, t, &out, &nan_count, &muted);
      if (mode == SummaryMode::kNanCount) {
        in.data = &nan_count;
        in.size = sizeof(nan_count);
      } else {
        in.data = out.data();
        in.size = out.size() * sizeof(double);
      }
      const int rc = api->submit(api->engine, &in);
      g_submitted.fetch_add(1, std::memory_order_relaxed);
      return rc;
    }
    in.encode = EncodeSummaryRecord;
    SummaryOwner* owner = new SummaryOwner{t, mode, attrs};
    in.owner = owner;
    in.release = ReleaseSummaryOwner;
    // The buffer stays referenced until the summary is computed.
    in.charge_bytes = t.IsInitialized() ? std::max<uint64_t>(t.TotalBytes(), 1) : 1;
    const int rc = api->submit(api->engine, &in);
    g_submitted.fetch_add(1, std::memory_order_relaxed);
    return rc;
  } catch (...) {
    return -1;
  }
}

SummaryStats GetSummaryStats() {
  SummaryStats s;
  s.submitted = g_submitted.load(std::memory_order_relaxed);
  s.skipped = g_skipped.load(std::memory_order_relaxed);
  s.muted = g_muted.load(std::memory_order_relaxed);
  return s;
}

}  // namespace bridge
}  // namespace tfdump
