// The read step shared by LoadFile and LoadInto: given destinations for some tensors of an open
// checkpoint, fill them through the engine with the IO strategy LoadOptions asks for (backend,
// O_DIRECT through the staged pipeline or buffered reads straight into the destinations). No
// torch types: destinations are plain memory. Private to integration/.
#pragma once

#include "engine/loader.h"
#include "integration/load.h"
#include "io/checkpoint.h"

#include <span>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::detail {

// Decides once, before any read, whether to read with O_DIRECT: DirectIo::kOn, or kAuto when less
// than half of the checkpoint is in the page cache (sampled with mincore; recorded in
// report.resident_fraction). Throws LoadError (rule "direct" for O_DIRECT with --io mmap).
bool ChooseDirect(const io::Checkpoint& checkpoint, const LoadOptions& options, LoadReport& report);

// Fills every target's destination (each holding the tensor's bytes, contiguous, host memory that
// outlives the call). Records in `report` what read the bytes (io, fallback, threads,
// peak_in_flight, direct, notes) and returns the engine's stages, (name, seconds), in order.
// Throws LoadError naming file, tensor and offset; destinations then hold unspecified bytes.
std::vector<std::pair<std::string, double>> ReadTargets(const io::Checkpoint& checkpoint,
                                                        std::span<const engine::LoadTarget> targets,
                                                        const LoadOptions& options, bool direct,
                                                        LoadReport& report);

}  // namespace shardstream::detail
