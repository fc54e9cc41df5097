// What other parts of the bridge may ask of the capture slots (slots.cc):
// submitting through a slot's binding from a debug op of ours, which sees
// the slot URL in its debug_urls attribute instead of going through TF's
// memcbk callback.
#ifndef TFDUMP_BRIDGE_SLOTS_H_
#define TFDUMP_BRIDGE_SLOTS_H_

#include <stdint.h>

#include <string>

#include "engine_api.h"
#include "tensorflow/core/debug/debug_node_key.h"

namespace tfdump {
namespace bridge {

// How many capture slots there are (memcbk://tfdump_slot_0 ... _63).
constexpr int kMaxSlots = 64;

// The slot index of a `memcbk://tfdump_slot_<i>` URL, or -1.
int SlotOfUrl(const std::string& url);

// A debug op's `tensor_name` attribute split as TF's BaseDebugOp does:
// "node:slot" (no ":slot" means slot 0).
void SplitTensorName(const std::string& tensor_name, std::string* node, int32_t* output_slot);

// Called with the run a slot is bound to and the interned key id; returns a
// TFDUMP_SUBMIT_* code (or a negative code counted as failed).
typedef int (*SlotSubmitFn)(const tfdump_engine_api* api, uint32_t run_id, uint32_t key_id, void* ctx);

// Runs `fn` under slot `slot`'s binding, with the same in-flight protocol and
// forwarded / orphaned / failed counters as the memcbk callback: nothing
// happens (counted as orphaned) when no run is bound. Never throws.
void SubmitThroughSlot(int slot, const tensorflow::DebugNodeKey& key, SlotSubmitFn fn, void* ctx) noexcept;

}  // namespace bridge
}  // namespace tfdump

#endif  // TFDUMP_BRIDGE_SLOTS_H_
