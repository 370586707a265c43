#pragma once
// SPDX-License-Identifier: MIT
// The library version; CMake reads these three lines.

#define ENGRAM_VERSION_MAJOR 0
#define ENGRAM_VERSION_MINOR 1
#define ENGRAM_VERSION_PATCH 0
