// libFuzzer target: the table-file reader (engram pack's output): the manifest metadata, its
// cross-field checks, the vocabulary and the shard checks of a single-file table, then
// `verify` and row lookups through the file's codec.
//
// table_file::open reads a path, so each input is written to one file in a per-process
// directory under /dev/shm (memory, not disk). The file is named table.safetensors, the name
// the seeds' manifests give their single shard.
#include "fuzz_common.hpp"

#include <engram/io/table_file.hpp>

#include <unistd.h> // for getpid

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

/// The per-process directory; never destroyed, so that the exit handler can still read it.
const std::filesystem::path* const input_dir = [] {
    std::filesystem::path base = "/dev/shm";
    if (!std::filesystem::is_directory(base)) base = std::filesystem::temp_directory_path();
    const auto* dir = new std::filesystem::path(base / ("engram-fuzz-table-" + std::to_string(::getpid())));
    std::filesystem::create_directories(*dir);
    std::atexit([] { // libFuzzer exits through exit(): leave nothing behind
        std::error_code ec;
        std::filesystem::remove_all(*input_dir, ec);
    });
    return dir;
}();

const std::filesystem::path& input_path() {
    static const std::filesystem::path path = *input_dir / "table.safetensors";
    return path;
}

void write_input(const std::uint8_t* data, std::size_t size) {
    std::ofstream out(input_path(), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    out.close();
    engram_fuzz::require(out.good(), "the input file was written");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    write_input(data, size);
    engram_fuzz::run_one([&] {
        const auto tf = engram::table_file::open(input_path());
        engram_fuzz::require(tf.num_shards() >= 1, "a table has shards");
        if (tf.vocab()) (void)tf.layout();
        (void)tf.manifest().to_json().dump();
        tf.visit_rows([&](const auto& rows) {
            engram_fuzz::require(rows.rows() == tf.rows() && rows.dim() == tf.dim(),
                                 "rows table has the manifest's shape");
            if (rows.rows() == 0) return;
            const std::vector<engram::row_id> ids = {0, static_cast<engram::row_id>(rows.rows() - 1),
                                                     static_cast<engram::row_id>(rows.rows() / 2)};
            std::vector<float> out(ids.size() * rows.dim());
            rows.gather(ids, out);
        });
        (void)tf.verify();
    });
    return 0;
}
