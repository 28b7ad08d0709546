// Read a DICOM SEG the way OHIF 3.13 does: dcmjs parses the files and @cornerstonejs/adapters
// (the versions OHIF 3.13.2 bundles, see package.json) builds the labelmaps, here in node.
//
//   node cornerstone_seg.mjs OUT.json SEG.dcm SOURCE.dcm...
//
// The sources are given in the order the caller wants the labelmaps back; an Enhanced
// (multi-frame) source gives one image per frame, in frame order. OUT.json gets, for each
// loader ("cornerstone3D": generateToolState as OHIF calls it; "legacy": the cornerstone
// tools 4 loader), either {error} or {segments, labelmaps}: segments indexed as the loader
// indexes them ({index, number, label, rgb}), labelmaps one base64 little-endian uint16 array
// of rows x columns per source image (0 where no segment, else the loader's segment index).
import { readFileSync, writeFileSync } from 'node:fs';
import { adaptersSEG } from '@cornerstonejs/adapters';
import { generateToolState as legacyToolState } from '@cornerstonejs/adapters/cornerstone/Segmentation_4X';
import { cache, metaData } from '@cornerstonejs/core';
import dcmjs from 'dcmjs';

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

function naturalize(path) {
  const buf = readFileSync(path);
  const arrayBuffer = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  const file = DicomMessage.readFile(arrayBuffer, { untilTag: '7FE00010', includeUntilTagValue: false });
  const ds = DicomMetaDictionary.naturalizeDataset(file.dict);
  ds._meta = DicomMetaDictionary.namifyDataset(file.meta);
  return { ds, arrayBuffer };
}

const one = (v) => (Array.isArray(v) ? v[0] : v);

// One image per source file or frame, with the metadata modules cornerstone asks for.
function sourceImages(paths) {
  const images = [];
  for (const path of paths) {
    const { ds } = naturalize(path);
    const frames = Number(ds.NumberOfFrames || 1);
    const shared = one(ds.SharedFunctionalGroupsSequence) || {};
    const perFrame = [].concat(ds.PerFrameFunctionalGroupsSequence || []);
    for (let f = 1; f <= frames; f++) {
      const group = perFrame[f - 1] || {};
      const pick = (seq, key) => one(group[seq])?.[key] ?? one(shared[seq])?.[key];
      const ipp = (pick('PlanePositionSequence', 'ImagePositionPatient') ?? ds.ImagePositionPatient).map(Number);
      const iop = (pick('PlaneOrientationSequence', 'ImageOrientationPatient') ?? ds.ImageOrientationPatient).map(Number);
      const spacing = (pick('PixelMeasuresSequence', 'PixelSpacing') ?? ds.PixelSpacing).map(Number);
      const imageId = `wadors:/studies/${ds.StudyInstanceUID}/series/${ds.SeriesInstanceUID}/instances/${ds.SOPInstanceUID}/frames/${f}`;
      const instance = { ...ds, ImagePositionPatient: ipp, ImageOrientationPatient: iop, PixelSpacing: spacing };
      if (frames > 1) instance.NumberOfFrames = frames;
      images.push({
        imageId,
        modules: {
          instance,
          generalImageModule: { sopInstanceUID: ds.SOPInstanceUID, instanceNumber: ds.InstanceNumber },
          generalSeriesModule: { seriesInstanceUID: ds.SeriesInstanceUID, modality: ds.Modality },
          imagePlaneModule: {
            frameOfReferenceUID: ds.FrameOfReferenceUID, rows: ds.Rows, columns: ds.Columns,
            imageOrientationPatient: iop, rowCosines: iop.slice(0, 3), columnCosines: iop.slice(3),
            imagePositionPatient: ipp, pixelSpacing: spacing, rowPixelSpacing: spacing[0],
            columnPixelSpacing: spacing[1], sliceThickness: Number(ds.SliceThickness || 1),
          },
          imagePixelModule: {
            samplesPerPixel: 1, photometricInterpretation: 'MONOCHROME2', rows: ds.Rows, columns: ds.Columns,
            bitsAllocated: 16, bitsStored: 16, highBit: 15, pixelRepresentation: 0,
          },
        },
      });
    }
  }
  return images;
}

function segments(segMetadata) {
  const out = [];
  segMetadata.data.forEach((item, index) => {
    if (!item) return;
    const lab = item.RecommendedDisplayCIELabValue;
    const rgb = lab ? dcmjs.data.Colors.dicomlab2RGB(lab.map(Number)).map((c) => Math.round(c * 255)) : null;
    out.push({ index, number: item.SegmentNumber, label: item.SegmentLabel, rgb });
  });
  return out;
}

const b64 = (typed) => {
  const u16 = Uint16Array.from(typed);
  return Buffer.from(u16.buffer).toString('base64');
};

async function cornerstone3D(imageIds, segBuffer) {
  // what OHIF 3.13's SEG extension calls (createFromDicomSegImageId differs only in where the bytes come from)
  const result = await adaptersSEG.Cornerstone3D.Segmentation.generateToolState(imageIds, segBuffer, metaData);
  const byId = new Map(result.labelMapImages.flat().map((img) => [img.referencedImageId, img]));
  const labelmaps = imageIds.map((id) => {
    const img = byId.get(id);
    return img ? b64(img.voxelManager ? img.voxelManager.getScalarData() : img.getPixelData()) : null;
  });
  return { segments: segments(result.segMetadata), labelmaps };
}

async function legacy(imageIds, segBuffer) {
  const result = await legacyToolState(imageIds, segBuffer, metaData, { skipOverlapping: false, tolerance: 1e-3 });
  const [buffer] = result.labelmapBufferArray;
  const { rows, columns } = metaData.get('imagePlaneModule', imageIds[0]);
  const slice = rows * columns;
  const view = new Uint8Array(buffer);
  const labelmaps = imageIds.map((_, k) => b64(view.subarray(k * slice, (k + 1) * slice)));
  return { segments: segments(result.segMetadata), labelmaps };
}

async function main() {
  const [out, segPath, ...sourcePaths] = process.argv.slice(2);
  if (!out || !segPath || sourcePaths.length === 0) {
    console.error('usage: node cornerstone_seg.mjs OUT.json SEG.dcm SOURCE.dcm...');
    process.exit(2);
  }
  const images = sourceImages(sourcePaths);
  const modules = new Map(images.map((im) => [im.imageId, im.modules]));
  metaData.addProvider((type, imageId) => modules.get(imageId)?.[type], 10000);
  const imageIds = images.map((im) => im.imageId);
  const segBytes = readFileSync(segPath);
  const segBuffer = () => segBytes.buffer.slice(segBytes.byteOffset, segBytes.byteOffset + segBytes.byteLength);
  const report = { imageIds };
  for (const [name, load] of [['cornerstone3D', cornerstone3D], ['legacy', legacy]]) {
    try {
      report[name] = await load(imageIds, segBuffer());
    } catch (err) {
      report[name] = { error: String(err?.message ?? err) };
    }
    cache.purgeCache();
  }
  writeFileSync(out, JSON.stringify(report));
}

main().catch((err) => {
  console.error(`cornerstone_seg: ${err?.stack ?? err}`);
  process.exit(1);
});
