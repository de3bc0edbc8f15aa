#include "tiers/host/host_tier.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tiers/chunk_format.h"

namespace kvtier {
namespace {

constexpr uint64_t kHugePage = 2ull << 20;
constexpr uint64_t kAlign = 4096;

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

Result<std::unique_ptr<HostTier>> HostTier::Create(const HostTierOptions& options) {
  if (options.capacity_bytes < kChunkPayloadOffset + kAlign)
    return Status::InvalidArgument("host tier: capacity_bytes " + std::to_string(options.capacity_bytes) +
                                   " is too small to hold one chunk; give it at least a few MiB");
  std::unique_ptr<HostTier> t(new HostTier());
  t->region_bytes_ = RoundUp(options.capacity_bytes, kAlign);
  const int populate = options.prefault ? MAP_POPULATE : 0;
  void* p = MAP_FAILED;
  if (options.shared) {
    // A memfd: hugetlbfs pages when asked for and reserved, else normal shared pages
    // (shared memory gets no transparent huge pages by default).
    int fd = -1;
    if (options.huge_pages != HugePages::kOff) {
      t->map_bytes_ = RoundUp(t->region_bytes_, kHugePage);
      fd = memfd_create("kvtier-host", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
      if (fd >= 0 && ftruncate(fd, static_cast<off_t>(t->map_bytes_)) == 0) {
        p = mmap(nullptr, t->map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | populate, fd, 0);
      }
      if (p == MAP_FAILED && fd >= 0) {
        close(fd);
        fd = -1;
      }
      if (p != MAP_FAILED) t->huge_pages_ = "hugetlb";
      if (p == MAP_FAILED && options.huge_pages == HugePages::kRequire)
        return Status::NoMemory("host tier: cannot map " + std::to_string(t->map_bytes_) +
                                " bytes of shared hugetlbfs pages; reserve them (vm.nr_hugepages) or set huge_pages "
                                "to auto");
    }
    if (p == MAP_FAILED) {
      t->map_bytes_ = t->region_bytes_;
      fd = memfd_create("kvtier-host", MFD_CLOEXEC | MFD_ALLOW_SEALING);
      if (fd < 0) return Status::IOError(std::string("host tier: memfd_create: ") + std::strerror(errno));
      if (ftruncate(fd, static_cast<off_t>(t->map_bytes_)) != 0) {
        const int e = errno;
        close(fd);
        return Status::NoMemory("host tier: cannot size the shared region to " + std::to_string(t->map_bytes_) +
                                " bytes (" + std::strerror(e) + ")");
      }
      p = mmap(nullptr, t->map_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | populate, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        close(fd);
        return Status::NoMemory("host tier: cannot map the shared region of " + std::to_string(t->map_bytes_) +
                                " bytes (" + std::strerror(e) + "); lower host capacity");
      }
      t->huge_pages_ = "none";
    }
    t->fd_ = fd;
  }
  if (p == MAP_FAILED && options.huge_pages != HugePages::kOff) {
    t->map_bytes_ = RoundUp(t->region_bytes_, kHugePage);
    p = mmap(nullptr, t->map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | populate,
             -1, 0);
    if (p != MAP_FAILED) t->huge_pages_ = "hugetlb";
    if (p == MAP_FAILED && options.huge_pages == HugePages::kRequire)
      return Status::NoMemory("host tier: cannot map " + std::to_string(t->map_bytes_) +
                              " bytes of hugetlbfs pages (" + std::strerror(errno) +
                              "); reserve them (vm.nr_hugepages) or set huge_pages to auto");
  }
  if (p == MAP_FAILED) {
    // Transparent huge pages need the advice before the pages are touched, so map first,
    // advise, then fault the region in by hand.
    t->map_bytes_ = options.huge_pages == HugePages::kOff ? t->region_bytes_ : RoundUp(t->region_bytes_, kHugePage);
    p = mmap(nullptr, t->map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      return Status::NoMemory("host tier: cannot map " + std::to_string(t->map_bytes_) + " bytes (" +
                              std::strerror(errno) + "); lower host capacity");
    t->huge_pages_ = "none";
    if (options.huge_pages != HugePages::kOff && madvise(p, t->map_bytes_, MADV_HUGEPAGE) == 0)
      t->huge_pages_ = "transparent";
    if (options.prefault) {
      // MADV_POPULATE_WRITE (Linux 5.14) faults everything in at once; fall back to
      // touching one byte per page.
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
      if (madvise(p, t->map_bytes_, MADV_POPULATE_WRITE) != 0) {
        volatile uint8_t* b = static_cast<uint8_t*>(p);
        for (uint64_t off = 0; off < t->map_bytes_; off += kAlign) b[off] = 0;
      }
    }
  }
  t->region_ = static_cast<uint8_t*>(p);
  t->space_ = std::make_unique<ExtentAllocator>(t->region_bytes_, kAlign);
  return t;
}

HostTier::~HostTier() {
  if (region_ != nullptr) munmap(region_, map_bytes_);
  if (fd_ >= 0) close(fd_);
}

uint64_t HostTier::SlotBytes(uint64_t payload_bytes) { return kChunkPayloadOffset + RoundUp(payload_bytes, kAlign); }

Status HostTier::CheckFits(uint64_t payload_bytes) const {
  if (payload_bytes == 0 || SlotBytes(payload_bytes) > region_bytes_)
    return Status::InvalidArgument("host tier: a chunk of " + std::to_string(payload_bytes) +
                                   " payload bytes does not fit in the region of " + std::to_string(region_bytes_) +
                                   " bytes; raise host capacity or lower chunk_tokens");
  return Status::OK();
}

Result<SlotId> HostTier::Allocate(uint64_t payload_bytes) {
  KVTIER_RETURN_IF_ERROR(CheckFits(payload_bytes));
  const uint64_t need = SlotBytes(payload_bytes);
  std::lock_guard<std::mutex> l(mu_);
  std::optional<uint64_t> off = space_->Allocate(need);
  if (!off)
    return Status::NoSpace("host tier: no free extent of " + std::to_string(need) + " bytes in the region of " +
                           std::to_string(region_bytes_) + " bytes");
  return SlotId{*off, need};
}

void HostTier::Free(SlotId slot) {
  std::lock_guard<std::mutex> l(mu_);
  space_->Free(slot.offset, slot.bytes);
}

uint8_t* HostTier::SlotAddress(SlotId slot) const { return region_ + slot.offset; }

Status HostTier::Publish(const ChunkKey& key, SlotId slot) {
  std::lock_guard<std::mutex> l(mu_);
  auto [it, inserted] = by_key_.emplace(key, slot);
  if (!inserted) return Status::Busy("host tier: chunk " + key.ToHex() + " already has a slot");
  used_bytes_ += slot.bytes;
  return Status::OK();
}

std::optional<SlotId> HostTier::Find(const ChunkKey& key) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return std::nullopt;
  return it->second;
}

bool HostTier::Remove(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return false;
  SlotId s = it->second;
  by_key_.erase(it);
  used_bytes_ -= s.bytes;
  space_->Free(s.offset, s.bytes);
  return true;
}

uint64_t HostTier::used_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return used_bytes_;
}

uint64_t HostTier::chunk_count() const {
  std::lock_guard<std::mutex> l(mu_);
  return by_key_.size();
}

uint64_t HostTier::free_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return space_->free_bytes();
}

}  // namespace kvtier
