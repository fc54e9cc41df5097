// Served capture: the TfdumpIdentity debug op and the state behind
// tfdump_fast.serve() (src/tfdump_fast/serving.py).
//
// TensorFlow's memcbk callback gets (DebugNodeKey, Tensor) and no step id,
// and several clients may run steps on one ps at the same time, so a served
// process cannot tell from a callback which run a tensor belongs to.
// TfdumpIdentity has DebugIdentity's attributes (TF's debug node inserter
// accepts any registered op with them) and its Compute() sees
// context->step_id(): the master's step id, the same in every partition of
// one master step (MasterSession draws it at random, 56 bits, per step).
// Clients put it, instead of DebugIdentity, on the watches of nodes that run
// in served processes, with the URL memcbk://tfdump_served_1; it forwards the
// input and hands the tensor to the served engine under the engine run bound
// to its step (one pre-opened run per master step, taken from a pool the
// Python side keeps filled). On a client's own partitions it is put beside
// DebugIdentity on a few watches, with the slot URL: there it only records
// the step id for the slot's run, which joins the client's run to the
// served runs of the same step.

#include <stdint.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "tensorflow/core/debug/debug_callback_registry.h"
#include "tensorflow/core/debug/debug_node_key.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

#include "bridge/capture.h"
#include "bridge/debug_op_def.h"
#include "bridge/probe.h"
#include "bridge/slots.h"
#include "served_api.h"

#define TFDUMP_EXPORT __attribute__((visibility("default")))

namespace tfdump {
namespace bridge {
namespace {

std::atomic<int64_t> g_slot_step[kMaxSlots];

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct StepRun {
  uint32_t run_id = 0;
  int64_t last_us = 0;
  int inflight = 0;
};

struct Served {
  std::mutex mu;
  const tfdump_engine_api* api = nullptr;  // guarded by mu
  int inflight = 0;                        // guarded by mu
  std::vector<uint32_t> free_runs;         // guarded by mu
  std::unordered_map<int64_t, StepRun> by_step;  // guarded by mu
  bool registered = false;
  std::atomic<uint64_t> submitted{0}, no_run{0}, failed{0}, steps{0};
};

Served& S() {
  static Served* s = new Served();  // never destroyed: TF threads may outlive exit
  return *s;
}

void ServedSubmit(int64_t step, const std::string& device,
                  const std::string& node, int32_t slot,
                  const tensorflow::Tensor& t) {
  Served& s = S();
  const tfdump_engine_api* api;
  uint32_t run_id;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    api = s.api;
    if (api == nullptr) return;
    auto it = s.by_step.find(step);
    if (it == s.by_step.end()) {
      if (s.free_runs.empty()) {
        s.no_run.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      StepRun sr;
      sr.run_id = s.free_runs.back();
      s.free_runs.pop_back();
      it = s.by_step.emplace(step, sr).first;
      s.steps.fetch_add(1, std::memory_order_relaxed);
    }
    it->second.inflight++;
    it->second.last_us = NowUs();
    run_id = it->second.run_id;
    s.inflight++;
  }
  int rc = -1;
  try {
    static const char kOp[] = "DebugIdentity";
    uint32_t key = api->intern_key(api->engine, device.data(), device.size(),
                                   node.data(), node.size(), slot, kOp,
                                   sizeof(kOp) - 1);
    rc = SubmitTensor(api, run_id, key, nullptr, t);
  } catch (...) {
    rc = -1;
  }
  if (rc == TFDUMP_SUBMIT_OK || rc == TFDUMP_SUBMIT_DROPPED) {
    s.submitted.fetch_add(1, std::memory_order_relaxed);
  } else {
    s.failed.fetch_add(1, std::memory_order_relaxed);
  }
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.by_step.find(step);
  if (it != s.by_step.end()) {
    it->second.inflight--;
    it->second.last_us = NowUs();
  }
  s.inflight--;
}

class TfdumpIdentityOp : public tensorflow::OpKernel {
 public:
  explicit TfdumpIdentityOp(tensorflow::OpKernelConstruction* ctx)
      : OpKernel(ctx) {
    std::string tensor_name;
    std::vector<std::string> urls;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("device_name", &device_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("tensor_name", &tensor_name));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("debug_urls", &urls));
    SplitTensorName(tensor_name, &node_, &output_slot_);
    const std::string served_url = std::string("memcbk://") + kServedCallbackKey;
    for (const std::string& url : urls) {
      if (url == served_url) served_ = true;
      const int i = SlotOfUrl(url);
      if (i >= 0) slot_index_ = i;
    }
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& input = ctx->input(0);
    const int64_t step = ctx->step_id();
    if (slot_index_ >= 0) {
      int64_t expected = 0;
      g_slot_step[slot_index_].compare_exchange_strong(expected, step);
    }
    if (served_) ServedSubmit(step, device_, node_, output_slot_, input);
    ctx->set_output(0, input);
  }

  bool IsExpensive() override { return false; }

 private:
  std::string device_, node_;
  int32_t output_slot_ = 0;
  bool served_ = false;
  int slot_index_ = -1;
};

int Start(const tfdump_engine_api* api) {
  if (api == nullptr || api->api_version != TFDUMP_ENGINE_API_VERSION) return -1;
  Served& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.api != nullptr) return -1;
  s.api = api;
  if (!s.registered) {
    // Registered once, never removed: its presence is what the probe
    // reports. TfdumpIdentity does not go through it; a DebugIdentity with
    // this URL (not sent by us) is discarded instead of aborting.
    tensorflow::DebugCallbackRegistry::singleton()->RegisterCallback(
        kServedCallbackKey,
        [](const tensorflow::DebugNodeKey&, const tensorflow::Tensor&) {});
    s.registered = true;
  }
  return 0;
}

void AddRuns(const uint32_t* ids, int n) {
  Served& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  for (int i = 0; i < n; ++i) s.free_runs.push_back(ids[i]);
}

int TakeIdle(int64_t idle_us, int64_t* steps, uint32_t* runs, int cap) {
  Served& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  const int64_t now = NowUs();
  int n = 0;
  for (auto it = s.by_step.begin(); it != s.by_step.end() && n < cap;) {
    if (it->second.inflight == 0 &&
        (idle_us < 0 || now - it->second.last_us >= idle_us)) {
      steps[n] = it->first;
      runs[n] = it->second.run_id;
      ++n;
      it = s.by_step.erase(it);
    } else {
      ++it;
    }
  }
  return n;
}

int TakeUnused(uint32_t* runs, int cap) {
  Served& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  int n = 0;
  while (!s.free_runs.empty() && n < cap) {
    runs[n++] = s.free_runs.back();
    s.free_runs.pop_back();
  }
  return n;
}

void Stop() {
  Served& s = S();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.api = nullptr;
  }
  for (;;) {  // wait for submitting threads (they may block in the engine)
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (s.inflight == 0) break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

void GetStats(tfdump_served_stats* out) {
  if (out == nullptr) return;
  Served& s = S();
  out->tensors_submitted = s.submitted.load(std::memory_order_relaxed);
  out->tensors_no_run = s.no_run.load(std::memory_order_relaxed);
  out->tensors_failed = s.failed.load(std::memory_order_relaxed);
  out->steps_bound = s.steps.load(std::memory_order_relaxed);
}

int64_t TakeSlotStep(int slot) {
  if (slot < 0 || slot >= kMaxSlots) return 0;
  return g_slot_step[slot].exchange(0);
}

const tfdump_served_api kServedApi = {
    TFDUMP_SERVED_API_VERSION, Start, AddRuns, TakeIdle, TakeUnused, Stop,
    GetStats, TakeSlotStep,
};

}  // namespace

TFDUMP_REGISTER_DEBUG_OP("TfdumpIdentity")
    .Doc("tfdump-fast's debug op: DebugIdentity that also sees the step id.");
TFDUMP_REGISTER_DEBUG_KERNELS("TfdumpIdentity", TfdumpIdentityOp);

}  // namespace bridge
}  // namespace tfdump

extern "C" TFDUMP_EXPORT const tfdump_served_api* tfdump_served_get_api(void) {
  return &tfdump::bridge::kServedApi;
}
