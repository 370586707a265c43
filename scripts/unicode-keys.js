#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// What the Hugging Face tokenizers library's normalisers do to every code point on its own:
// NFKC, NFD, StripAccents (combining marks removed), Lowercase, the steps of spec section 1's
// key. Writes one line per code point that changes: "CP R1,R2,..." in hex ("CP" alone when it is
// removed); code points not listed stay as they are. Surrogates are not code points of text.
// Usage: node scripts/unicode-keys.js OUT_TXT [BINDING_DIR]
'use strict';

const fs = require('fs');

if (process.argv.length < 3 || process.argv.length > 4) {
    process.stderr.write('usage: node unicode-keys.js OUT_TXT [BINDING_DIR]\n');
    process.exit(2);
}
const tk = require(require.resolve('@anush008/tokenizers', {paths: [process.argv[3] || __dirname]}));
const normalize = tk.sequenceNormalizer([tk.nfkcNormalizer(), tk.nfdNormalizer(), tk.stripAccentsNormalizer(),
                                         tk.lowercase()]);
const lines = [];
for (let cp = 0; cp <= 0x10ffff; ++cp) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const s = String.fromCodePoint(cp);
    const r = normalize.normalizeString(s);
    if (r === s) continue;
    const out = Array.from(r, (c) => c.codePointAt(0).toString(16));
    lines.push(cp.toString(16) + (out.length ? ' ' + out.join(',') : ''));
}
fs.writeFileSync(process.argv[2], lines.join('\n') + '\n');
process.stdout.write(`${lines.length} code points change\n`);
