// The MPI distributed storage (engram/dist), run under mpirun on 1, 2 and 4 ranks: gathers and
// whole layers (demo and DeepSeek-V4.1) give the bits of one dense table; a table file is served
// by each rank from its own shards; start-up failures and refused input fail every rank with
// the same error. Every collective call below is made on every rank (no REQUIRE before one).
#include <catch2/catch.hpp>

#include "support/thrown.hpp"

#include <engram/dist/table.hpp>
#include <engram/dist/table_file.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/model/deepseek_v41.hpp>
#include <engram/model/hf_checkpoint.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace dist = engram::dist;
using engram::row_id;

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

int rank_of() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
int size_of() {
    int n = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// A dense table of codec C with deterministic rows (the same on every rank).
template <class C>
engram::dense_storage::table<C> full_table(std::size_t rows, std::size_t dim, unsigned seed) {
    engram::dense_storage::table<C> t(rows, dim);
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.5f);
    std::vector<float> row(dim);
    for (std::size_t r = 0; r < rows; ++r) {
        for (auto& v : row) v = nd(rng);
        t.set_row(r, row);
    }
    return t;
}

/// Rows [first, first + n) of `src` as a dense table of their own (the same encoded bytes).
template <class C>
engram::dense_storage::table<C> slice_of(const engram::dense_storage::table<C>& src, std::size_t first, std::size_t n) {
    engram::dense_storage::table<C> t(n, src.dim());
    for (std::size_t r = 0; r < n; ++r) {
        const auto from = src.encoded_row(first + r);
        std::copy(from.begin(), from.end(), t.encoded_row(r).begin());
    }
    return t;
}

template <class Table>
std::vector<float> gather_of(const Table& t, const std::vector<row_id>& ids) {
    std::vector<float> out(ids.size() * t.dim());
    t.gather(std::span<const row_id>(ids), std::span<float>(out));
    return out;
}

/// Row ids that differ per rank, with repeats; rank 1 asks for none when `empty_on_1`.
std::vector<row_id> ids_of_rank(std::size_t rows, std::size_t n, bool empty_on_1) {
    if (empty_on_1 && rank_of() == 1) return {};
    std::mt19937_64 rng(100 + static_cast<unsigned>(rank_of()));
    std::vector<row_id> ids(n);
    for (auto& id : ids) id = static_cast<row_id>(rng() % (rows / 3 + 1)); // many repeats
    for (std::size_t i = 0; i < n; i += 7) ids[i] = static_cast<row_id>(rng() % rows);
    return ids;
}

/// Whether every rank got the same text (its digest, compared across ranks).
bool same_on_every_rank(const std::string& text) {
    const dist::communicator comm(MPI_COMM_WORLD);
    const auto all = comm.allgather(dist::detail::fnv1a(text));
    return std::all_of(all.begin(), all.end(), [&](std::uint64_t d) { return d == all[0]; });
}

template <class C>
void check_gathers(dist::split s) {
    constexpr std::size_t dim = 64;
    engram::layer_layout layout; // 5 heads of prime sizes, for the head split
    layout.primes = {101, 103, 107, 109, 113};
    std::int64_t off = 0;
    for (auto p : layout.primes) {
        layout.offsets.push_back(off);
        off += p;
    }
    layout.total_rows = off;
    layout.head_dim = dim;
    const std::size_t rows = static_cast<std::size_t>(off);
    const auto full = full_table<C>(rows, dim, 7);
    const auto p = dist::row_partition::make(s, layout, static_cast<std::size_t>(size_of()));
    const auto me = static_cast<std::size_t>(rank_of());
    const dist::mpi_table<engram::dense_storage::table<C>> table(
        MPI_COMM_WORLD, p, slice_of(full, p.first_row(me), p.rows_of(me)), p.first_row(me));
    CHECK(table.rows() == rows);
    CHECK(table.dim() == dim);
    for (bool empty_on_1 : {false, true}) {
        const auto ids = ids_of_rank(rows, 900, empty_on_1);
        CHECK(same_bits(gather_of(table, ids), gather_of(full, ids)));
    }
    // Traffic: the ids sent are the distinct ones; what every rank sent, the others received.
    const dist::communicator comm(MPI_COMM_WORLD);
    table.reset_stats();
    const auto ids = ids_of_rank(rows, 900, false);
    (void)gather_of(table, ids);
    std::vector<row_id> distinct(ids);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    const auto& st = table.stats();
    CHECK(st.exchanges == 1);
    CHECK(st.positions == ids.size());
    CHECK(st.unique_rows == distinct.size());
    const auto mine = static_cast<std::uint64_t>(std::count_if(
        distinct.begin(), distinct.end(), [&](row_id r) { return p.owner(static_cast<std::size_t>(r)) == me; }));
    CHECK(st.remote_rows == distinct.size() - mine);
    CHECK(comm.sum(st.bytes_sent) == comm.sum(st.bytes_received));
    CHECK(comm.sum(st.rows_served) == comm.sum(st.remote_rows));
}

} // namespace

TEST_CASE("gathers equal one dense table, split by rows or by head, any codec", "[dist][gather]") {
    check_gathers<engram::f32_codec>(dist::split::rows);
    check_gathers<engram::f32_codec>(dist::split::heads);
    check_gathers<engram::bf16_codec>(dist::split::rows);
    check_gathers<engram::fp8_e4m3_codec>(dist::split::heads);
    check_gathers<engram::int8_codec>(dist::split::rows);
}

TEST_CASE("non-blocking exchanges: two in flight, progressed between pieces of work", "[dist][prefetch]") {
    using C = engram::bf16_codec;
    const std::size_t rows = 997, dim = 32;
    const auto full = full_table<C>(rows, dim, 11);
    using storage = dist::mpi_storage<engram::dense_storage>;
    storage::table<C> table(MPI_COMM_WORLD, rows, dim);
    std::vector<float> row(dim);
    std::size_t stored = 0;
    for (std::size_t r = 0; r < rows; ++r) {
        full.get_row(r, row);
        stored += table.set_row(r, row) ? 1 : 0;
    }
    CHECK(stored == table.owned_rows());
    const dist::communicator comm(MPI_COMM_WORLD);
    CHECK(comm.sum(stored) == rows);

    const auto a = ids_of_rank(rows, 600, false), b = ids_of_rank(rows, 300, true);
    const std::size_t heads = 3;
    auto ta = table.prefetch_rows(a, 1, a.size() / heads, heads);
    auto tb = table.prefetch_rows(b, 1, b.size() / heads, heads);
    for (int i = 0; i < 100 && !(ta.progress() && tb.progress()); ++i) {
        volatile double x = 0; // a piece of other work
        for (int k = 0; k < 1000; ++k) x = x + k;
    }
    CHECK(same_bits(std::vector<float>(ta.memory().begin(), ta.memory().end()), gather_of(full, a)));
    CHECK(same_bits(std::vector<float>(tb.memory().begin(), tb.memory().end()), gather_of(full, b)));
    // More exchanges than lanes: the oldest on a lane is completed first; all stay correct.
    std::vector<dist::exchange_ticket<engram::dense_storage::table<C>>> tickets;
    for (int k = 0; k < 5; ++k) tickets.push_back(table.prefetch_rows(a, 1, a.size() / heads, heads));
    for (auto& t : tickets)
        CHECK(same_bits(std::vector<float>(t.memory().begin(), t.memory().end()), gather_of(full, a)));
    // A ticket dropped unwaited still completes (the others need this rank's rows).
    { auto dropped = table.prefetch_rows(b, 1, b.size() / heads, heads); }
    CHECK(same_bits(gather_of(table, a), gather_of(full, a)));
}

TEST_CASE("the demo layer over the ranks equals the dense layer, bit for bit", "[dist][layer]") {
    const auto file = engram::safetensors_file::open(data("forward_small.safetensors"));
    const auto layer = engram::load_layer(file);
    const auto ids = file.at("input_ids").to_vector<std::int64_t>();
    const auto hidden = file.at("hidden_states").to_vector<float>();
    const auto B = static_cast<std::size_t>(file.at("input_ids").shape[0]);
    const auto T = static_cast<std::size_t>(file.at("input_ids").shape[1]);
    std::vector<float> want(hidden.size());
    layer.forward(ids, B, T, hidden, want);

    const auto& full = layer.table();
    for (auto s : {dist::split::rows, dist::split::heads}) {
        const auto p = dist::row_partition::make(s, layer.layout(), static_cast<std::size_t>(size_of()));
        const auto me = static_cast<std::size_t>(rank_of());
        const dist::mpi_table<std::remove_cvref_t<decltype(full)>> table(
            MPI_COMM_WORLD, p, slice_of(full, p.first_row(me), p.rows_of(me)), p.first_row(me));
        // Every rank runs the whole batch...
        std::vector<float> out(hidden.size());
        dist::forward(layer, table, ids, B, T, hidden, out);
        CHECK(same_bits(out, want));
        // ... and each rank its own sequences (rank r: sequences r, r + P, ...; some have none).
        const std::size_t width = hidden.size() / (B * T);
        std::vector<std::int64_t> my_ids;
        std::vector<float> my_hidden, my_want;
        std::size_t my_b = 0;
        for (std::size_t b = me; b < B; b += static_cast<std::size_t>(size_of()), ++my_b) {
            my_ids.insert(my_ids.end(), ids.begin() + static_cast<long>(b * T),
                          ids.begin() + static_cast<long>((b + 1) * T));
            const auto at = static_cast<long>(b * T * width), end = static_cast<long>((b + 1) * T * width);
            my_hidden.insert(my_hidden.end(), hidden.begin() + at, hidden.begin() + end);
            my_want.insert(my_want.end(), want.begin() + at, want.begin() + end);
        }
        std::vector<float> my_out(my_hidden.size());
        dist::forward(layer, table, my_ids, my_b, T, my_hidden, my_out);
        CHECK(same_bits(my_out, my_want));
    }
}

TEST_CASE("DeepSeek-V4.1's layer over the ranks: FP8 rows travel encoded, same bits", "[dist][layer][v41]") {
    namespace v41 = engram::deepseek_v41;
    auto file =
        std::make_shared<const engram::safetensors_file>(engram::safetensors_file::open(data("v41_case.safetensors")));
    const auto cfg = v41::config::from_json(nlohmann::json::parse(*file->find_metadata("config")));
    const auto vocab = engram::load_canonical_table(*file);
    v41::tensor_set tensors;
    tensors.add_all(file);
    const auto layer = v41::load_layer(cfg, 1, vocab, tensors);
    const auto raw = file->at("input_ids").to_vector<std::int64_t>();
    const auto mask = file->at("token_mask").to_vector<std::uint8_t>();
    const auto B = static_cast<std::size_t>(file->at("input_ids").shape[0]);
    const auto T = static_cast<std::size_t>(file->at("input_ids").shape[1]);
    const auto& h = file->at("hidden_states");
    std::vector<float> hidden(h.numel());
    for (std::size_t i = 0; i < hidden.size(); ++i) {
        std::uint16_t bits = 0;
        std::memcpy(&bits, h.bytes.data() + 2 * i, 2);
        hidden[i] = engram::bfloat16{bits}.to_float();
    }
    std::vector<float> want(hidden.size()), out(hidden.size());
    layer.forward(raw, B, T, hidden, want, mask);

    const auto& full = layer.table(); // the FP8 codes and scales in place
    for (auto s : {dist::split::rows, dist::split::heads}) {
        const auto p = dist::row_partition::make(s, layer.layout(), static_cast<std::size_t>(size_of()));
        const auto me = static_cast<std::size_t>(rank_of());
        const dist::mpi_table<engram::fp8_tensor_table> table(
            MPI_COMM_WORLD, p, full.slice(p.first_row(me), p.rows_of(me)), p.first_row(me));
        CHECK(table.wire_row_bytes() == full.dim() + full.dim() / 32);
        dist::forward(layer, table, raw, B, T, hidden, out, mask);
        CHECK(same_bits(out, want));
    }
}

TEST_CASE("a table file: each rank maps only its shards; bad shards fail every rank alike", "[dist][file]") {
    const dist::communicator comm(MPI_COMM_WORLD);
    const auto source = engram::safetensors_file::open(data("forward_small.safetensors"));
    // Rank 0 packs; every rank then works on its own copy (what separate machines would hold).
    const auto tag = std::to_string(comm.allgather(static_cast<std::uint64_t>(::getpid()))[0]);
    const fs::path root = fs::temp_directory_path() / ("engram_dist_" + tag);
    const fs::path packed = root / "packed", other = root / "other";
    if (comm.rank() == 0) {
        fs::create_directories(packed);
        fs::create_directories(other);
        engram::pack_table(source, packed / "t.safetensors", "bf16", 5);
        engram::pack_table(source, other / "t.safetensors", "bf16", 5); // same rows, another table id
    }
    comm.barrier();
    const fs::path mine = root / ("rank" + std::to_string(comm.rank()));
    fs::create_directories(mine);
    for (const auto& e : fs::directory_iterator(packed)) fs::copy_file(e.path(), mine / e.path().filename());
    comm.barrier();

    const auto layer = engram::load_layer(source);
    const auto dense = engram::table_file::open(packed / "t.safetensors");
    const auto rows = dense.rows();
    const auto ids = ids_of_rank(rows, 700, false);
    const auto want = gather_of(dense.rows_table<engram::bfloat16>(), ids);
    for (auto s : {dist::split::rows, dist::split::heads}) {
        // Each rank's copy keeps only the shards that hold its rows (the others moved away):
        // opening and every gather still work, so no rank opens another rank's shards.
        const auto p = dist::row_partition::make(s, dist::manifest_layout(dense.manifest()), comm.usize());
        const auto [k0, k1] =
            dense.shards_holding(p.first_row(comm.urank()), p.first_row(comm.urank()) + p.rows_of(comm.urank()));
        const fs::path own = root / ("own" + std::to_string(comm.rank()) + std::string(dist::split_name(s)));
        fs::create_directories(own);
        fs::copy_file(packed / "t.safetensors", own / "t.safetensors");
        for (std::size_t k = k0; k < k1; ++k)
            if (dense.manifest().shards[k].file != "t.safetensors")
                fs::copy_file(packed / dense.manifest().shards[k].file, own / dense.manifest().shards[k].file);
        std::size_t files = 0;
        for ([[maybe_unused]] const auto& e : fs::directory_iterator(own)) ++files;
        CHECK(files <= 1 + (k1 - k0));
        dist::open_table_file(MPI_COMM_WORLD, own / "t.safetensors", s, [&](const auto& table) {
            CHECK(same_bits(gather_of(table, ids), want));
            CHECK(table.local().num_shards() == k1 - k0);
            CHECK(table.local_first_row() == dense.manifest().shards[k0].first_row);
        });
    }

    // Which shard holds rank 1's first row (by rows): the one rank 1 cannot do without.
    const auto p = dist::row_partition::by_rows(rows, comm.usize());
    const std::size_t victim_rank = comm.size() > 1 ? 1 : 0;
    const auto shard = dense.shards_holding(p.first_row(victim_rank), p.first_row(victim_rank) + 1).first;
    const auto shard_name = dense.manifest().shards[shard].file;
    auto open_fails = [&] {
        return engram_test::thrown_message<engram::error>([&] {
            dist::open_table_file(MPI_COMM_WORLD, mine / "t.safetensors", dist::split::rows, [](const auto&) {});
        });
    };
    // A missing shard on one rank.
    if (comm.urank() == victim_rank) fs::rename(mine / shard_name, mine / (shard_name + ".away"));
    std::string e = open_fails();
    CHECK(same_on_every_rank(e));
    CHECK(e.find("rank " + std::to_string(victim_rank)) != std::string::npos);
    CHECK(e.find(shard_name) != std::string::npos);
    // A shard of another pack (manifest mismatch: another table id).
    if (comm.urank() == victim_rank) fs::copy_file(other / shard_name, mine / shard_name);
    e = open_fails();
    CHECK(same_on_every_rank(e));
    CHECK(e.find("belongs to another table") != std::string::npos);
    if (comm.urank() == victim_rank) {
        fs::remove(mine / shard_name);
        fs::rename(mine / (shard_name + ".away"), mine / shard_name);
    }
    // Another table altogether on the last rank (a stale copy): the fingerprints differ.
    const fs::path which = comm.rank() == comm.size() - 1 && comm.size() > 1 ? other : mine;
    e = engram_test::thrown_message<engram::config_error>(
        [&] { dist::open_table_file(MPI_COMM_WORLD, which / "t.safetensors", dist::split::rows, [](const auto&) {}); });
    if (comm.size() > 1) {
        CHECK(same_on_every_rank(e));
        CHECK(e.find("fingerprint") != std::string::npos);
    } else {
        CHECK(e == "<nothing thrown>");
    }
    comm.barrier();
    std::error_code ec;
    if (comm.rank() == 0) fs::remove_all(root, ec);
}

TEST_CASE("mismatched configurations and refused input fail every rank with one error", "[dist][errors]") {
    using C = engram::f32_codec;
    const dist::communicator comm(MPI_COMM_WORLD);
    const auto last = static_cast<std::size_t>(comm.size() - 1);
    // One rank with another dim.
    {
        const std::size_t dim = comm.urank() == last && comm.size() > 1 ? 16 : 8;
        const std::string e = engram_test::thrown_message<engram::config_error>([&] {
            const auto p = dist::row_partition::by_rows(100, comm.usize());
            const dist::mpi_table<engram::dense_storage::table<C>> t(
                MPI_COMM_WORLD, p, engram::dense_storage::table<C>(p.rows_of(comm.urank()), dim),
                p.first_row(comm.urank()));
        });
        if (comm.size() > 1) {
            CHECK(same_on_every_rank(e));
            CHECK(e.find("rank " + std::to_string(last) + "'s dim (16) differs from rank 0's (8)") !=
                  std::string::npos);
        }
    }
    // One rank's local table does not cover its rows.
    {
        const std::string e = engram_test::thrown_message<engram::config_error>([&] {
            const auto p = dist::row_partition::by_rows(100, comm.usize());
            const std::size_t n = p.rows_of(comm.urank()) - (comm.urank() == last ? 1 : 0);
            const dist::mpi_table<engram::dense_storage::table<C>> t(
                MPI_COMM_WORLD, p, engram::dense_storage::table<C>(n, 8), p.first_row(comm.urank()));
        });
        CHECK(same_on_every_rank(e));
        CHECK(e.find("rank " + std::to_string(last) + " of") != std::string::npos);
        CHECK(e.find("but this rank owns rows") != std::string::npos);
    }
    // A row id outside the table on one rank: every rank's gather throws that rank's error.
    {
        dist::mpi_storage<engram::dense_storage>::table<C> t(MPI_COMM_WORLD, 100, 8);
        std::vector<row_id> ids = {1, 2, 3};
        if (comm.urank() == last) ids.push_back(100);
        std::vector<float> out(ids.size() * 8, 7.0f);
        const std::string e = engram_test::thrown_message<engram::input_error>(
            [&] { t.gather(std::span<const row_id>(ids), std::span<float>(out)); });
        CHECK(same_on_every_rank(e));
        CHECK(e.find("rank " + std::to_string(last)) != std::string::npos);
        CHECK(e.find("100") != std::string::npos);
        CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == 7.0f; }));
        // The table still works afterwards (every rank left the exchange together).
        const std::vector<row_id> good = {0, 99};
        std::vector<float> o2(16);
        CHECK_NOTHROW(t.gather(std::span<const row_id>(good), std::span<float>(o2)));
    }
    // More ranks than heads (by head) or rows: the same error everywhere.
    if (comm.size() > 1) {
        engram::layer_layout l;
        l.primes = {7};
        l.offsets = {0};
        l.total_rows = 7;
        l.head_dim = 8;
        const std::string e = engram_test::thrown_message<engram::config_error>(
            [&] { dist::mpi_storage<engram::dense_storage, dist::split::heads>::table<C> t(MPI_COMM_WORLD, l); });
        CHECK(same_on_every_rank(e));
        CHECK(e.find("heads into") != std::string::npos);
    }
}
