// Rows -> one Parquet file of the contract (contract/vectors.py): the same Arrow schema, zstd, dictionary
// encoding only on the repeating text columns (parquet_options), the fingerprint in the key-value metadata.
// Written by parquet-wasm (arrow-rs's writer compiled to Wasm) from an apache-arrow table: a maintained
// writer, not a hand-written one. The Wasm file is fetched only when a file is first written.

import {Field, Float32, Int32, List, Schema, Table, TimestampMicrosecond, Utf8, makeData, makeVector,
        tableToIPC, vectorFromArray} from 'apache-arrow';
import initParquet, {Compression, Table as WasmTable, WriterPropertiesBuilder, writeParquet} from 'parquet-wasm/esm';

let ready = null;

export function loadParquet(wasmUrl) {
  ready = ready || initParquet({module_or_path: wasmUrl});
  return ready;
}

function schema(contract, metadata) {
  const text = (name, nullable = true) => new Field(name, new Utf8(), nullable);
  return new Schema([
    text('image_id', false), text('label'), text('source'),
    new Field('width', new Int32(), true), new Field('height', new Int32(), true),
    new Field('features', new List(new Field('item', new Float32(), true)), true),
    text('model_sha256'), text('model_name'), text('client_id'),
    new Field('vectorized_at', new TimestampMicrosecond('UTC'), true),
  ], metadata);
}

function featuresVector(rows, dim) {
  const values = new Float32Array(rows.length * dim);
  const offsets = new Int32Array(rows.length + 1);
  rows.forEach((r, i) => {
    if (r.features.length !== dim) throw new Error(`${r.source}: ${r.features.length} features, expected ${dim}`);
    values.set(r.features, i * dim);
    offsets[i + 1] = (i + 1) * dim;
  });
  const type = new List(new Field('item', new Float32(), true));
  const child = makeData({type: new Float32(), length: values.length, nullCount: 0, data: values});
  return makeVector(makeData({type, length: rows.length, nullCount: 0, valueOffsets: offsets, child}));
}

/**
 * Contract rows ({imageId, label, source, width, height, features, vectorizedAt (ms)}) of one model and one
 * client -> Parquet bytes (Uint8Array).
 */
export async function writeVectors(contract, rows, {modelSha256, modelName, clientId}) {
  await ready;
  const keys = contract.metadata_keys;
  const metadata = new Map([[keys.contract_version, contract.contract_version],
                            [keys.model_sha256, modelSha256], [keys.model_name, modelName]]);
  const s = schema(contract, metadata);
  const col = (name, values) => vectorFromArray(values, s.fields.find((f) => f.name === name).type);
  const table = new Table(s, {
    image_id: col('image_id', rows.map((r) => r.imageId)),
    label: col('label', rows.map((r) => r.label ?? null)),
    source: col('source', rows.map((r) => r.source)),
    width: col('width', rows.map((r) => r.width)),
    height: col('height', rows.map((r) => r.height)),
    features: featuresVector(rows, contract.feature_dim),
    model_sha256: col('model_sha256', rows.map(() => modelSha256)),
    model_name: col('model_name', rows.map(() => modelName)),
    client_id: col('client_id', rows.map(() => clientId)),
    vectorized_at: col('vectorized_at', rows.map((r) => r.vectorizedAt)),
  });
  let props = new WriterPropertiesBuilder().setCompression(Compression.ZSTD).setDictionaryEnabled(false)
    .setKeyValueMetadata(metadata);
  for (const name of contract.dictionary_columns) props = props.setColumnDictionaryEnabled(name, true);
  const wasmTable = WasmTable.fromIPCStream(tableToIPC(table, 'stream'));
  return writeParquet(wasmTable, props.build());
}
