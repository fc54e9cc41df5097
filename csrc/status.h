// Native status codes. Native code never throws across a library boundary and
// never touches Python: it records one of these codes plus a message, and
// src/tfdump_fast/errors.py (the one place) maps it to an exception.
// Keep the values in step with errors.py's STATUS_* constants.
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
