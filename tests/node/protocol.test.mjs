// Node 20's `node --test tests/node/` only picks up files named like *.test.mjs, test-*.mjs or
// test.mjs when given a directory; this makes it find the suite in protocol.mjs.
import './protocol.mjs';
