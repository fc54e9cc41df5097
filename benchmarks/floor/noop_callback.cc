// The benchmark floor: a memcbk:// debug callback that does nothing with the
// tensor. It shares no code with tfdump-fast's engine or bridge; what a
// debugged step costs with it is what TensorFlow's debug ops and the
// DebugCallbackRegistry cost by themselves (benchmarks/steps/floor.py).
#include <atomic>
#include <cstdint>
#include <string>

#include "tensorflow/core/debug/debug_callback_registry.h"

namespace {
// Counted so the harness can check that the floor saw as many tensors as
// the hook: one relaxed increment per tensor, nothing else.
std::atomic<uint64_t> g_calls{0};
}  // namespace

extern "C" {

void floor_register(const char* key) {
  tensorflow::DebugCallbackRegistry::singleton()->RegisterCallback(
      std::string(key),
      [](const tensorflow::DebugNodeKey&, const tensorflow::Tensor&) {
        g_calls.fetch_add(1, std::memory_order_relaxed);
      });
}

uint64_t floor_calls() { return g_calls.load(std::memory_order_relaxed); }

}  // extern "C"
