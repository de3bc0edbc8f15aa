// The edge between CUDA errors and kvtier::Status (mover_cuda.h). Built only with CUDA.

#include <string>

#include "kernels/mover_cuda.h"

namespace kvtier {

Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return Status::OK();
  std::string msg(what);
  msg += ": ";
  msg += cudaGetErrorName(err);
  msg += " (";
  msg += cudaGetErrorString(err);
  msg += ")";
  switch (err) {
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidResourceHandle:
      return Status::InvalidArgument(msg + "; check the plan's geometry and that every pointer is device memory");
    case cudaErrorInvalidConfiguration:
      return Status::InvalidArgument(msg);
    case cudaErrorMemoryAllocation:
      return Status::NoMemory(msg + "; free GPU memory or lower the batch size");
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return Status::NotSupported(msg + "; run on a machine with an NVIDIA GPU and a driver for CUDA " +
                                  std::to_string(CUDART_VERSION / 1000) + "." +
                                  std::to_string(CUDART_VERSION % 1000 / 10));
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return Status::NotSupported(msg +
                                  "; rebuild kvtier with -DCMAKE_CUDA_ARCHITECTURES=<this GPU's compute capability>");
    case cudaErrorNotReady:
      return Status::Busy(msg);
    default:
      return Status::Internal(msg);
  }
}

}  // namespace kvtier
