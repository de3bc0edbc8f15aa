// The machine limit for the NVMe benchmarks: what the device gives to random O_DIRECT
// transfers with nothing of kvtier in the way, measured by a bare io_uring loop and, as
// a cross-check, by fio. A tier's figure is reported next to these and their ratio.
//
// GB/s here is 10^9 bytes per second. Thread-safety: the functions share nothing; each
// call uses its own ring and file descriptor.
#ifndef KVTIER_BENCH_RAW_IO_H_
#define KVTIER_BENCH_RAW_IO_H_

#include <cstdint>
#include <string>

#include "kvtier/status.h"

namespace kvtier::bench {

struct RawIoResult {
  double gbps = 0;     // bytes / seconds / 1e9
  uint64_t bytes = 0;  // moved in the measured interval
  double seconds = 0;  // measured interval (from the first submit to the last completion)
};

// Keeps `depth` random, block-aligned O_DIRECT reads (or writes) of block_bytes in flight
// on [0, file_bytes) of `path` for `seconds`, with its own io_uring ring and registered
// buffers. Writes create the file and fallocate it to file_bytes when needed. Reads need
// a file of at least file_bytes that the caller has filled (a never-written extent can be
// served without touching the device and would inflate the figure); file_bytes = 0 reads
// the whole file. block_bytes must be a multiple of 4096 and at most file_bytes.
Result<RawIoResult> RawUringThroughput(const std::string& path, bool write, uint64_t block_bytes, uint32_t depth,
                                       double seconds, uint64_t file_bytes);

// Random-read throughput of `path` (its whole size) as fio measures it with io_uring,
// O_DIRECT, `depth` in flight and blocks of block_bytes, in GB/s. NotFound when fio is not
// installed; IOError when fio fails (with the end of its output).
Result<double> FioRandReadGbps(const std::string& path, uint64_t block_bytes, uint32_t depth, double seconds);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_RAW_IO_H_
