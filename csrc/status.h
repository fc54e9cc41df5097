// Native status codes. Native code never throws across a library boundary and
// never touches Python: it returns one of these codes (plus a message where
// it has one), and tfdump_fast._native's check_status (the one place) turns
// it into the exception errors.py maps it to. _native exports the codes as
// STATUS_*; tests/test_status.py checks errors.py's copies against them.
#ifndef TFDUMP_STATUS_H_
#define TFDUMP_STATUS_H_

namespace tfdump {

enum StatusCode : int {
  kOk = 0,
  kIO = 1,
  kNoSpace = 2,
  kPermission = 3,
  kClosed = 4,
  kBadArgument = 5,
  kDiskBudget = 6,
  kCorrupt = 7,
  kTruncated = 8,
  kBadVersion = 9,
  kInternal = 10,
};

}  // namespace tfdump

#endif  // TFDUMP_STATUS_H_
