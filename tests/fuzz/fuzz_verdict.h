// What each fuzz target exports besides LLVMFuzzerTestOneInput: the verdict on one input, "valid"
// or the rule of the error ("header-json", "index-weight-map", ...). Aborts when an invariant of
// the code under test is broken. replay_main.cc prints it for the differential tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace shardstream::fuzz {

std::string Verdict(const uint8_t* data, size_t size);

}  // namespace shardstream::fuzz
