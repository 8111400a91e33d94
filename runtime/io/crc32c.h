// CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78): the checksum of every box
// of a checkpoint (parallel/checkpoint.h), as iSCSI (RFC 3720), ext4, TensorBoard records and
// Google's crc32c library compute it: initial value ~0, reflected input and output, final ~0.
//
// Two implementations of the same function: the SSE4.2 `crc32` instruction where the CPU has
// it (checked at run time, so a portable build still uses it), otherwise slicing-by-8 tables.
#ifndef LATTICE_RUNTIME_IO_CRC32C_H_
#define LATTICE_RUNTIME_IO_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace lattice {

// The CRC-32C of `crc`'s data followed by data[0, n): Crc32cExtend(Crc32c(a), b) ==
// Crc32c(a + b). Start from 0.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);
inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

namespace crc32c_internal {
// The table implementation, and the instruction one (only valid when HasHardware()); exposed so
// tests check both against the RFC 3720 vectors and against each other.
uint32_t ExtendPortable(uint32_t crc, const void* data, size_t n);
uint32_t ExtendHardware(uint32_t crc, const void* data, size_t n);
bool HasHardware();
}  // namespace crc32c_internal

}  // namespace lattice

#endif  // LATTICE_RUNTIME_IO_CRC32C_H_
