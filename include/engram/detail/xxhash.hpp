#pragma once
// SPDX-License-Identifier: MIT
// The one place xxhash.h enters engram: inlined (static, renamed symbols), no library to link.

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#endif
#include <xxhash.h>
