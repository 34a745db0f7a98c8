// Process-wide registry of memory-mapped weight files (ECSS: every expert's weights live once in host
// memory). Worker threads share the process's address space, so a file mapped by any thread is
// mapped for all: mapping the same path again returns the same id and adds a reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace hetmoe {

struct MappedWeights {
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

// Maps `path` read-only (MAP_SHARED: pages come from the page cache, so even several processes
// share one copy). `populate` pre-faults every page. Returns the id; throws std::runtime_error.
int mapWeights(const std::string& path, bool populate);
// Drops one reference; the mapping goes when the last reference does.
void unmapWeights(int id);
// Adds a reference to a mapping that exists (work in flight keeps it alive; drop it with
// unmapWeights). False when `id` is not mapped.
bool retainWeights(int id);
// Lock-free lookup for kernels; {nullptr, 0} for an unknown id.
MappedWeights weightsById(int id);

}  // namespace hetmoe
