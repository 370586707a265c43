// engram pack / engram verify: table files (a layer's rows in a codec, sharded, with a manifest).
#include "cli.hpp"

#include <engram/io/table_file.hpp>
#include <engram/model/deepseek_v41_pack.hpp>
#include <engram/model/hf_checkpoint.hpp>

#include <signal.h> // for sigaction
#include <unistd.h> // for isatty

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <system_error>

namespace engram_cli {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

std::string fixed(double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
    return buf;
}

/// 1234567 -> "1.2 MB" (decimal units, as disks are sold).
std::string human_bytes(double bytes) {
    const char* units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    int u = 0;
    while (bytes >= 1000 && u < 5) {
        bytes /= 1000;
        ++u;
    }
    return fixed(bytes, u == 0 ? 0 : 1) + " " + units[u];
}

/// A one-line progress bar on stderr. On a terminal the line is redrawn in place (at most ten
/// times a second); elsewhere nothing is printed while working, and `finish` prints one final
/// line if the work took long enough to be worth reporting.
class progress_bar {
public:
    progress_bar(std::string label, std::uint64_t bytes_per_unit)
        : label_(std::move(label)), bytes_per_unit_(bytes_per_unit), tty_(::isatty(2) == 1) {}

    void update(std::uint64_t done, std::uint64_t total) {
        done_ = done;
        total_ = total;
        if (!tty_) return;
        const auto now = clock_type::now();
        if (drawn_ && done < total && now - last_ < std::chrono::milliseconds(100)) return;
        last_ = now;
        std::cerr << '\r' << line() << "\x1b[K" << std::flush;
        drawn_ = true;
    }
    /// The work is done: complete the line (terminal) or print it once if the work was long.
    void finish() {
        if (tty_ && drawn_)
            std::cerr << '\r' << line() << "\x1b[K\n" << std::flush;
        else if (!tty_ && seconds_since(start_) >= 2.0)
            std::cerr << line() << '\n' << std::flush;
        drawn_ = false;
    }
    /// The work failed: end a half-drawn line so the error message starts on its own line.
    void abort() {
        if (tty_ && drawn_) std::cerr << "\r\x1b[K" << std::flush;
        drawn_ = false;
    }

private:
    std::string line() const {
        constexpr int width = 30;
        const double frac = total_ == 0 ? 1.0 : static_cast<double>(done_) / static_cast<double>(total_);
        const int filled = static_cast<int>(frac * width);
        const double secs = seconds_since(start_);
        const double bytes = static_cast<double>(done_) * static_cast<double>(bytes_per_unit_);
        std::string s = label_ + " [" + std::string(static_cast<std::size_t>(filled), '#') +
                        std::string(static_cast<std::size_t>(width - filled), '.') + "] " + fixed(100 * frac, 0) +
                        "%  " + human_bytes(bytes) + " / " +
                        human_bytes(static_cast<double>(total_) * static_cast<double>(bytes_per_unit_));
        if (secs > 0.05) s += "  " + human_bytes(bytes / secs) + "/s";
        if (done_ < total_ && done_ > 0 && secs > 0.5)
            s += "  ETA " + fixed(secs * (1 - frac) / frac, 0) + " s";
        else if (done_ >= total_)
            s += "  " + fixed(secs, 1) + " s";
        return s;
    }

    std::string label_;
    std::uint64_t bytes_per_unit_;
    bool tty_;
    bool drawn_ = false;
    std::uint64_t done_ = 0, total_ = 0;
    clock_type::time_point start_ = clock_type::now(), last_{};
};

/// Runs `work(bar)`, ending the bar's line on success and failure alike.
template <class Work>
auto with_bar(progress_bar& bar, Work&& work) {
    try {
        auto result = work();
        bar.finish();
        return result;
    } catch (...) {
        bar.abort();
        throw;
    }
}

/// Set by SIGINT / SIGTERM / SIGHUP while a pack runs: the progress callback then throws, so
/// the writer unwinds and removes every file it made (instead of dying with temporaries left).
volatile std::sig_atomic_t pending_signal = 0;

void on_signal(int sig) { pending_signal = sig; }

class signal_guard {
public:
    signal_guard() {
        struct sigaction sa {};
        sa.sa_handler = &on_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        for (std::size_t i = 0; i < 3; ++i) ::sigaction(signals_[i], &sa, &old_[i]);
    }
    signal_guard(const signal_guard&) = delete;
    signal_guard& operator=(const signal_guard&) = delete;
    ~signal_guard() {
        for (std::size_t i = 0; i < 3; ++i) ::sigaction(signals_[i], &old_[i], nullptr);
    }
    /// Throws if a signal arrived.
    static void check() {
        if (const int sig = pending_signal; sig != 0)
            throw engram::io_error(std::string("interrupted by signal ") + std::to_string(sig) +
                                   "; the partial table was removed");
    }

private:
    static constexpr int signals_[3] = {SIGINT, SIGTERM, SIGHUP};
    struct sigaction old_[3]{};
};

struct pack_args {
    std::string input, output, codec = "f32";
    bool codec_given = false;
    std::size_t shards = 1;
    bool help = false;
    std::optional<std::int64_t> layer;    ///< DeepSeek-V4.1: the Engram layer to pack
    std::optional<std::string> token_map; ///< DeepSeek-V4.1: instead of tokenizer.json
};

/// `--name VALUE` or `--name=VALUE`: the value, advancing `i` past it.
bool option_value(const std::vector<std::string>& argv, std::size_t& i, std::string_view name, std::string& out) {
    const std::string& s = argv[i];
    if (s == name) {
        if (i + 1 >= argv.size()) throw usage_error(std::string(name) + " needs a value");
        out = argv[++i];
        return true;
    }
    if (s.size() > name.size() && s.compare(0, name.size(), name) == 0 && s[name.size()] == '=') {
        out = s.substr(name.size() + 1);
        return true;
    }
    return false;
}

constexpr const char* pack_usage =
    "engram pack CHECKPOINT.safetensors|V41_CHECKPOINT_DIR -o TABLE.safetensors [--codec f32|bf16|f16|fp8|int8] "
    "[--shards N] [--layer L] [--token-map FILE]";

pack_args parse_pack(const std::vector<std::string>& argv) {
    pack_args a;
    std::vector<std::string> positional;
    bool have_output = false;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& s = argv[i];
        std::string value;
        if (s == "-h" || s == "--help") {
            a.help = true;
        } else if (option_value(argv, i, "-o", value) || option_value(argv, i, "--output", value)) {
            a.output = value;
            have_output = true;
        } else if (option_value(argv, i, "--codec", value)) {
            static constexpr std::string_view codecs[] = {"f32", "bf16", "f16", "fp8", "int8"};
            bool known = false;
            for (auto c : codecs) known = known || value == c;
            if (!known) throw usage_error("--codec: unknown codec '" + value + "' (use f32, bf16, f16, fp8 or int8)");
            a.codec = value;
            a.codec_given = true;
        } else if (option_value(argv, i, "--layer", value)) {
            a.layer = static_cast<std::int64_t>(parse_count("--layer", value, 0, 1u << 20));
        } else if (option_value(argv, i, "--token-map", value)) {
            a.token_map = value;
        } else if (option_value(argv, i, "--shards", value)) {
            std::size_t n = 0;
            bool ok = !value.empty() && value.size() <= 6;
            for (char c : value) {
                ok = ok && c >= '0' && c <= '9';
                if (ok) n = n * 10 + static_cast<std::size_t>(c - '0');
            }
            if (!ok || n == 0)
                throw usage_error("--shards needs a positive number of shards (at most 999999), got '" + value + "'");
            a.shards = n;
        } else if (s.size() > 1 && s[0] == '-') {
            throw usage_error("unknown option '" + s + "'");
        } else {
            positional.push_back(s);
        }
    }
    if (a.help) return a;
    if (positional.size() != 1 || !have_output || a.output.empty())
        throw usage_error(std::string("usage: ") + pack_usage);
    a.input = positional[0];
    return a;
}

/// DeepSeek-V4.1: one Engram layer's in-place FP8 table of a checkpoint directory or a case file.
int pack_v41(const pack_args& a) {
    namespace v41 = engram::deepseek_v41;
    const auto start = clock_type::now();
    std::optional<std::filesystem::path> token_map;
    if (a.token_map) token_map = *a.token_map;
    v41::config cfg;
    engram::canonical_table vocab;
    v41::tensor_set tensors;
    std::optional<v41::checkpoint> ck;
    if (std::filesystem::is_directory(a.input)) {
        ck = v41::checkpoint::open(a.input, {token_map});
        cfg = ck->cfg();
        vocab = ck->vocab();
    } else {
        auto file = std::make_shared<const engram::safetensors_file>(engram::safetensors_file::open(a.input));
        cfg = v41::config::from_json(read_config(*file));
        vocab = token_map ? engram::load_canonical_table(*token_map) : engram::load_canonical_table(*file);
        tensors.add_all(file);
    }
    const std::optional<std::int64_t> layer = a.layer ? a.layer : cfg.layer_id;
    if (!layer) throw usage_error("--layer L is needed (one of " + v41::config::list_text(cfg.layer_ids) + ")");
    const auto table = v41::embedding_table(cfg, *layer, ck ? ck->tensors() : tensors);
    const std::string codec = a.codec_given ? a.codec : std::string("fp8");
    progress_bar bar("pack", engram::detail::codec_info_for(codec).row_bytes(table.dim()));
    const signal_guard signals;
    const engram::table_manifest m = with_bar(bar, [&] {
        return v41::pack_table(cfg, *layer, vocab, table, a.output, codec, a.shards,
                               [&](std::uint64_t done, std::uint64_t total) {
                                   signal_guard::check();
                                   bar.update(done, total);
                               });
    });
    const double secs = seconds_since(start);
    std::cout << "packed DeepSeek-V4.1 Engram layer " << *layer << " of " << a.input << " -> " << a.output << '\n'
              << "  " << m.rows << " rows x " << m.dim << " (" << m.codec << ", " << m.row_bytes
              << " bytes a row), V = " << vocab.vocab_size() << ", V' = " << vocab.canonical_size() << ", "
              << m.shards.size() << " shard(s), " << fixed(secs, 2) << " s\n";
    return 0;
}

int cmd_pack(const std::vector<std::string>& argv) {
    const pack_args a = parse_pack(argv);
    if (a.help) {
        std::cout << "usage: " << pack_usage << "\n\n"
                  << "Converts a reference checkpoint or forward case (the rows in\n"
                  << "'multi_head_embedding.embedding.weight', the config in the metadata, 'lookup' and\n"
                  << "'multipliers.layer{L}' when present) into a versioned table file: the rows in the chosen\n"
                  << "codec (default f32) plus a manifest of the config, layout, vocabulary and checksums.\n"
                  << "With --shards N the rows go to N files TABLE.shard{k}.safetensors and TABLE.safetensors\n"
                  << "holds the manifest. Every file is written to a temporary, fsynced and renamed; an\n"
                  << "interrupted pack leaves no table behind. 'engram verify TABLE.safetensors' checks it.\n"
                  << "A DeepSeek-V4.1 checkpoint directory or case file packs Engram layer --layer L (the FP8\n"
                  << "codes and E8M0 scales of its two tensors, re-encoded; default codec fp8) with the\n"
                  << "checkpoint's token map (tokenizer.json, or --token-map FILE).\n";
        return 0;
    }
    if (std::filesystem::is_directory(a.input) || a.layer ||
        engram::deepseek_v41::is_case_file(engram::safetensors_file::open(a.input)))
        return pack_v41(a);
    const auto start = clock_type::now();
    const auto source = engram::safetensors_file::open(a.input);
    // Temporaries an earlier pack of this table left when it was killed (never read; see
    // docs/failure-modes.md): removed before this pack makes its own.
    std::size_t removed = 0;
    for (const auto& p : engram::table_temporaries(a.output)) {
        std::error_code ec;
        if (std::filesystem::remove(p, ec)) ++removed;
    }
    // The bar counts rows; it shows bytes of encoded rows, so it needs the row size up front.
    std::uint64_t row_bytes = 0;
    if (const engram::tensor_view* w = source.find("multi_head_embedding.embedding.weight");
        w != nullptr && w->shape.size() == 2 && w->shape[1] > 0) {
        try {
            row_bytes = engram::detail::codec_info_for(a.codec).row_bytes(static_cast<std::size_t>(w->shape[1]));
        } catch (const engram::error&) {
        }
    }
    progress_bar bar("pack", row_bytes);
    const signal_guard signals;
    const engram::table_manifest m = with_bar(bar, [&] {
        return engram::pack_table(source, a.output, a.codec, a.shards, [&](std::uint64_t done, std::uint64_t total) {
            signal_guard::check();
            bar.update(done, total);
        });
    });
    const double secs = seconds_since(start);
    const std::uint64_t bytes = m.rows * m.row_bytes;
    std::cout << "packed " << a.input << " -> " << a.output << '\n'
              << "  layer " << m.config.layer_id << ": " << m.rows << " rows x " << m.dim << " (" << m.codec << ", "
              << m.row_bytes << " bytes a row), " << bytes << " bytes of rows (" << human_bytes(double(bytes)) << ")\n";
    if (m.canonical_vocab_size)
        std::cout << "  vocabulary: V = " << *m.vocab_size << ", V' = " << *m.canonical_vocab_size << '\n';
    else
        std::cout << "  vocabulary: none in the source (supply the canonical table when loading)\n";
    std::cout << "  " << m.shards.size() << (m.shards.size() == 1 ? " shard:" : " shards:");
    for (const auto& s : m.shards) std::cout << ' ' << s.file;
    std::cout << "\n  " << fixed(secs, 2) << " s";
    if (secs > 0) std::cout << " (" << human_bytes(double(bytes) / secs) << "/s)";
    std::cout << '\n';
    if (removed > 0)
        std::cout << "  removed " << removed << " temporary file(s) left by an earlier, interrupted pack\n";
    return 0;
}

int cmd_verify(const std::vector<std::string>& argv) {
    constexpr const char* usage = "engram verify TABLE.safetensors";
    const auto a = args::parse(argv);
    if (a.help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "Opens a table file (checking the manifest, the layout, the vocabulary checksum and that\n"
                  << "every shard file is there with the right shape), then hashes every row byte and compares\n"
                  << "each shard's XXH3-64 with the manifest. Prints OK and what was checked, or one error line\n"
                  << "naming the shard at fault (exit 1).\n";
        return 0;
    }
    a.expect(1, false, usage);
    if (a.output) throw usage_error(std::string("usage: ") + usage);
    const auto start = clock_type::now();
    const auto tf = engram::table_file::open(a.positional[0]);
    const auto& m = tf.manifest();
    progress_bar bar("verify", 1);
    const auto report = with_bar(
        bar, [&] { return tf.verify([&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); }); });
    const double secs = seconds_since(start);
    std::cout << "OK " << a.positional[0] << ": engram table v" << m.version << ", layer " << m.config.layer_id << ", "
              << m.rows << " rows x " << m.dim << " " << m.codec << " in " << report.shards
              << (report.shards == 1 ? " shard" : " shards") << '\n'
              << "  checked: manifest and layout (" << m.primes.size() << " heads), ";
    if (report.vocab)
        std::cout << "vocabulary (V = " << *m.vocab_size << ", V' = " << *m.canonical_vocab_size << ", checksum "
                  << engram::detail::hex64(*m.vocab_checksum) << "), ";
    std::cout << report.bytes << " bytes of rows against " << report.shards << " XXH3-64 checksum"
              << (report.shards == 1 ? "" : "s") << " in " << fixed(secs, 2) << " s\n";
    if (const auto leftovers = engram::table_temporaries(a.positional[0]); !leftovers.empty()) {
        std::cout << "  note: " << leftovers.size()
                  << " temporary file(s) of an interrupted pack lie next to the table (never read; delete them "
                     "when no pack is running):";
        for (const auto& p : leftovers) std::cout << ' ' << p.filename().string();
        std::cout << '\n';
    }
    return 0;
}

const registration reg_pack{
    {"pack",
     "pack CHECKPOINT.safetensors -o TABLE.safetensors [--codec C] [--shards N]  convert a checkpoint into a table "
     "file",
     &cmd_pack}};
const registration reg_verify{
    {"verify", "verify TABLE.safetensors                           check a table file's manifest and content checksums",
     &cmd_verify}};

} // namespace

} // namespace engram_cli
