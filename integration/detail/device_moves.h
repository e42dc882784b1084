// Which real tensors of a module sit on another device than LoadInto's device map asks for.
// Pure logic over devices (no tensors, no GPU), so that the rule is testable on any machine.
#pragma once

#include <c10/core/Device.h>

#include <string>
#include <utility>
#include <vector>

#include "shardstream/skeleton.h"

namespace shardstream::detail {

struct DeviceMove {
  std::string name;
  c10::Device from;
  c10::Device to;
};

// For each (name, device) of a real tensor, in order: a move when `devices.For(name)` differs
// (a CUDA device without an index means index 0). Meta tensors are Materialize's, not listed.
std::vector<DeviceMove> PlanDeviceMoves(
    const std::vector<std::pair<std::string, c10::Device>>& tensors, const DeviceMap& devices);

// "name: cpu -> cuda:0", as ModelLoadReport::moved lists it.
std::string DescribeMove(const DeviceMove& move);

}  // namespace shardstream::detail
