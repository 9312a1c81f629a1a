// Reading NumPy's .npz files in the browser: what POST /features?format=npz answers.
//
// An .npz is a ZIP archive with one .npy file per array. The service writes it with numpy.savez
// (entries stored, not compressed); numpy.savez_compressed's deflated entries are read too, through
// the browser's DecompressionStream. Sizes and offsets come from the ZIP central directory, which
// is exact even where the local headers carry ZIP64 placeholders (numpy forces ZIP64 entries).
//
//   const arrays = await parseNpz(await response.arrayBuffer());
//   arrays.stage1.shape  // [1, 48, 56, 56]
//   arrays.stage1.data   // Float32Array, C order

const EOCD_SIGNATURE = 0x06054b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const U32_MAX = 0xffffffff;

const DTYPES = {
  "<f4": Float32Array,
  "<f8": Float64Array,
  "<i4": Int32Array,
  "<u4": Uint32Array,
  "<i2": Int16Array,
  "<u2": Uint16Array,
  "|u1": Uint8Array,
  "|i1": Int8Array,
  "|b1": Uint8Array,
};

export class NpzFormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "NpzFormatError";
  }
}

function u64(view, offset) {
  const value = view.getBigUint64(offset, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new NpzFormatError("ZIP offset too large");
  return Number(value);
}

function findEndOfCentralDirectory(view) {
  // The record is 22 bytes plus a comment of up to 65535 bytes, at the very end.
  const last = view.byteLength - 22;
  for (let offset = last; offset >= Math.max(0, last - 65535); offset--) {
    if (view.getUint32(offset, true) === EOCD_SIGNATURE) return offset;
  }
  throw new NpzFormatError("not a ZIP archive: no end-of-central-directory record");
}

function centralDirectory(view) {
  const eocd = findEndOfCentralDirectory(view);
  let count = view.getUint16(eocd + 10, true);
  let offset = view.getUint32(eocd + 16, true);
  if (offset === U32_MAX || count === 0xffff) {
    const locator = eocd - 20;
    if (locator < 0 || view.getUint32(locator, true) !== ZIP64_LOCATOR_SIGNATURE) {
      throw new NpzFormatError("ZIP64 archive without its locator");
    }
    const record = u64(view, locator + 8);
    if (view.getUint32(record, true) !== ZIP64_EOCD_SIGNATURE) throw new NpzFormatError("bad ZIP64 record");
    count = u64(view, record + 32);
    offset = u64(view, record + 48);
  }
  return { count, offset };
}

// Sizes and the local header's offset from a central entry, ZIP64 extra field applied where the
// 32-bit fields say so (in that order: uncompressed, compressed, offset).
function zip64Fields(view, extraStart, extraLength, fields) {
  let pos = extraStart;
  while (pos + 4 <= extraStart + extraLength) {
    const id = view.getUint16(pos, true);
    const size = view.getUint16(pos + 2, true);
    if (id === 0x0001) {
      let field = pos + 4;
      for (const key of ["uncompressed", "compressed", "localOffset"]) {
        if (fields[key] === U32_MAX) {
          fields[key] = u64(view, field);
          field += 8;
        }
      }
      break;
    }
    pos += 4 + size;
  }
  return fields;
}

function* entries(view) {
  const decoder = new TextDecoder();
  const { count, offset } = centralDirectory(view);
  let pos = offset;
  for (let i = 0; i < count; i++) {
    if (view.getUint32(pos, true) !== CENTRAL_SIGNATURE) throw new NpzFormatError("bad central directory");
    const method = view.getUint16(pos + 10, true);
    const nameLength = view.getUint16(pos + 28, true);
    const extraLength = view.getUint16(pos + 30, true);
    const commentLength = view.getUint16(pos + 32, true);
    const name = decoder.decode(new Uint8Array(view.buffer, view.byteOffset + pos + 46, nameLength));
    const fields = zip64Fields(view, pos + 46 + nameLength, extraLength, {
      compressed: view.getUint32(pos + 20, true),
      uncompressed: view.getUint32(pos + 24, true),
      localOffset: view.getUint32(pos + 42, true),
    });
    yield { name, method, ...fields };
    pos += 46 + nameLength + extraLength + commentLength;
  }
}

async function entryBytes(bytes, view, entry) {
  const local = entry.localOffset;
  if (view.getUint32(local, true) !== LOCAL_SIGNATURE) throw new NpzFormatError(`bad header for ${entry.name}`);
  const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
  const stored = bytes.subarray(start, start + entry.compressed);
  if (entry.method === 0) return stored;
  if (entry.method === 8) {
    const stream = new Blob([stored]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  throw new NpzFormatError(`${entry.name}: unsupported ZIP compression method ${entry.method}`);
}

function headerField(header, pattern, what) {
  const match = header.match(pattern);
  if (!match) throw new NpzFormatError(`.npy header without ${what}: ${header}`);
  return match[1];
}

/** One .npy file's bytes to {shape, dtype, data} (data: a typed array in C order). */
export function parseNpy(bytes) {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) throw new NpzFormatError("not a .npy file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(
    bytes.subarray(headerStart, headerStart + headerLength),
  );
  const dtype = headerField(header, /'descr':\s*'([^']+)'/, "descr");
  if (headerField(header, /'fortran_order':\s*(True|False)/, "fortran_order") === "True") {
    throw new NpzFormatError("Fortran-ordered arrays are not supported");
  }
  const shape = headerField(header, /'shape':\s*\(([^)]*)\)/, "shape")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  const Type = DTYPES[dtype];
  if (!Type) throw new NpzFormatError(`unsupported dtype ${dtype} (little-endian numbers only)`);
  const count = shape.reduce((a, b) => a * b, 1);
  const start = headerStart + headerLength;
  const length = count * Type.BYTES_PER_ELEMENT;
  if (start + length > bytes.length) throw new NpzFormatError(`.npy data shorter than shape ${shape}`);
  // slice() copies into a fresh buffer, so the typed array is aligned whatever the ZIP offset was.
  const data = new Type(bytes.slice(start, start + length).buffer);
  return { shape, dtype, data };
}

/** An .npz archive (ArrayBuffer or Uint8Array) to {name: {shape, dtype, data}}. */
export async function parseNpz(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const arrays = {};
  for (const entry of entries(view)) {
    const name = entry.name.endsWith(".npy") ? entry.name.slice(0, -4) : entry.name;
    arrays[name] = parseNpy(await entryBytes(bytes, view, entry));
  }
  return arrays;
}
