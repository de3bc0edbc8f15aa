#include "kvtier/types.h"

namespace kvtier {

size_t DTypeSize(DType dtype) noexcept {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat32: return 4;
    case DType::kFp8E4M3:
    case DType::kFp8E5M2:
    case DType::kInt8:
    case DType::kUInt8: return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) noexcept {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFp8E4M3: return "fp8_e4m3";
    case DType::kFp8E5M2: return "fp8_e5m2";
    case DType::kInt8: return "int8";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

const char* TierName(TierId tier) noexcept {
  switch (tier) {
    case TierId::kGpu: return "gpu";
    case TierId::kHost: return "host";
    case TierId::kNvme: return "nvme";
    case TierId::kRedis: return "redis";
  }
  return "unknown";
}

}  // namespace kvtier
