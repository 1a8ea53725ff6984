// `portcullis gen`: a synthetic capture for demos and benchmarks.

import { Batch } from '../io/batch.js';
import { SyntheticSource } from '../io/synth.js';
import { PcapFileWriter } from '../io/pcap-file.js';
import { LinkType } from '../wire/meta.js';

export interface GenOptions { packets: number; flows: number; payload: number; seed: number }

export async function runGen(out: string, opts: GenOptions): Promise<number> {
  const src = new SyntheticSource({ packets: opts.packets, flows: opts.flows, payload: opts.payload, seed: opts.seed });
  const w = new PcapFileWriter(out, { linkType: LinkType.EN10MB });
  const batch = new Batch();
  const t0 = process.hrtime.bigint();
  try {
    while (src.recv(batch) > 0) w.writeBatch(batch);
  } finally {
    w.close();
  }
  const s = src.stats();
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  process.stdout.write(`wrote ${s.packets.toLocaleString('en-US')} packets (${(s.bytes / 1e6).toFixed(1)} MB) to ${out} in ${sec.toFixed(2)} s\n`);
  return 0;
}
