// Segmentation with a LiteNeXt .tflite file on Android through MediaPipe Tasks' ImageSegmenter,
// which reads the file's metadata (RGB input normalisation, labels, SIGMOID / SOFTMAX activation):
// no pre- or post-processing code. Checked against com.google.mediapipe:tasks-vision 1.0.0.
//
// Dependency (app/build.gradle.kts):
//     implementation("com.google.mediapipe:tasks-vision:1.0.0")     // minSdk 24
//     android { androidResources { noCompress += "tflite" } }
//
// The default int8 file (uint8 RGB in, float32 logits out, `--io uint8_float`), or the fp16 / fp32
// file, goes into app/src/main/assets/. Files written with --no-metadata or --io int8 / uint8 /
// float are for LiteNeXtSegmenter.kt (the LiteRT API) instead.

package com.example.litenext

import android.content.Context
import android.graphics.Bitmap
import android.graphics.Color
import com.google.mediapipe.framework.image.BitmapImageBuilder
import com.google.mediapipe.framework.image.ByteBufferExtractor
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.core.Delegate
import com.google.mediapipe.tasks.vision.core.RunningMode
import com.google.mediapipe.tasks.vision.imagesegmenter.ImageSegmenter

/** Class indices at the input bitmap's size, numbered as the contract's `classes` (0 = background). */
class ClassMask(val width: Int, val height: Int, val classes: IntArray) {
    /** Non-background pixels in `color`, the rest transparent. */
    fun toBitmap(color: Int = Color.argb(128, 255, 0, 0)): Bitmap {
        val pixels = IntArray(width * height) { if (classes[it] != 0) color else Color.TRANSPARENT }
        return Bitmap.createBitmap(pixels, width, height, Bitmap.Config.ARGB_8888)
    }
}

class MediaPipeSegmenter(
    context: Context,
    assetName: String = "litenext_int8.tflite",
    delegate: Delegate = Delegate.CPU, // Delegate.GPU: prefer the fp16 file
) : AutoCloseable {
    private val segmenter: ImageSegmenter

    /** The metadata's labels: the foreground's alone for a one-logit model, else the K class names. */
    val labels: List<String>

    init {
        val options = ImageSegmenter.ImageSegmenterOptions.builder()
            .setBaseOptions(BaseOptions.builder().setModelAssetPath(assetName).setDelegate(delegate).build())
            .setRunningMode(RunningMode.IMAGE)
            .setOutputCategoryMask(true)
            .setOutputConfidenceMasks(false) // true: per-class float masks, sigmoid(logit) for one logit
            .build()
        segmenter = ImageSegmenter.createFromOptions(context, options)
        labels = segmenter.labels
    }

    /** Segments `bitmap` (any size; MediaPipe resizes it and returns the mask at the bitmap's size). */
    fun segment(bitmap: Bitmap): ClassMask {
        // MediaPipe takes ARGB_8888 bitmaps: others, HARDWARE ones included (ImageDecoder's default), are copied.
        val argb = if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
        val result = segmenter.segment(BitmapImageBuilder(argb).build())
        val categoryMask = result.categoryMask().get()
        val bytes = ByteBufferExtractor.extract(categoryMask) // one byte per pixel, row-major
        val oneLogit = labels.size == 1
        val classes = IntArray(categoryMask.width * categoryMask.height) { i ->
            val c = bytes.get(i).toInt() and 0xFF
            // One logit: MediaPipe writes 0 (its one label, the foreground) where sigmoid(logit) > 0.5
            // and 255 elsewhere; turned into the contract's 1 = foreground, 0 = background.
            if (oneLogit) (if (c == 0) 1 else 0) else c
        }
        return ClassMask(categoryMask.width, categoryMask.height, classes)
    }

    override fun close() = segmenter.close()
}
