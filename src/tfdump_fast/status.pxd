# Declarations for csrc/status.h.
cdef extern from "status.h" namespace "tfdump":
    cdef enum StatusCode:
        kOk
        kIO
        kNoSpace
        kPermission
        kClosed
        kBadArgument
        kDiskBudget
        kCorrupt
        kTruncated
        kBadVersion
        kInternal
