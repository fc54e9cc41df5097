// Names shared by the cluster probe (probe.cc) and served capture.
#ifndef TFDUMP_BRIDGE_PROBE_H_
#define TFDUMP_BRIDGE_PROBE_H_

namespace tfdump {
namespace bridge {

// The memcbk key tfdump_fast.serve() registers in a ps/worker process; the
// probe reports whether it is registered there.
constexpr const char* kServedCallbackKey = "tfdump_served_1";

}  // namespace bridge
}  // namespace tfdump

#endif  // TFDUMP_BRIDGE_PROBE_H_
