// Binary segmentation with a LiteNeXt .tflite file on Android, through LiteRT's Interpreter API
// (org.tensorflow.lite.InterpreterApi, CPU with XNNPACK). Checked against LiteRT 2.3.0.
//
// Dependency (app/build.gradle.kts), bundled runtime:
//     implementation("com.google.ai.edge.litert:litert:2.3.0")      // minSdk 24
//     android { androidResources { noCompress += "tflite" } }        // so the model can be memory-mapped
// or the Google Play services runtime: play-services-tflite-java instead of litert, wait for
// TfLite.initialize(context) (a Task) and pass runtime = TfLiteRuntime.FROM_SYSTEM_ONLY (README.md).
//
// The model file (<name>_int8.tflite from tflite/convert.py, its contract <name>_int8.json beside
// it) goes into app/src/main/assets/. The class reads size, dtypes, scales and zero points from
// the model itself, so it runs the default int8 file (uint8 in, float32 out) and the
// --io int8 / uint8 / float, fp16 and fp32 files alike.

package com.example.litenext

import android.content.Context
import android.graphics.Bitmap
import android.graphics.Color
import android.os.Build
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import kotlin.math.roundToInt
import org.tensorflow.lite.DataType
import org.tensorflow.lite.InterpreterApi
import org.tensorflow.lite.InterpreterApi.Options.TfLiteRuntime

/** A mask at the model's resolution: `mask[y * width + x]` is true for foreground. */
class SegmentationResult(val width: Int, val height: Int, val mask: BooleanArray, val logits: FloatArray) {
    /** The mask as an ARGB bitmap (foreground `color`, background transparent), at the model size. */
    fun toBitmap(color: Int = Color.argb(128, 255, 0, 0)): Bitmap {
        val pixels = IntArray(width * height) { if (mask[it]) color else Color.TRANSPARENT }
        return Bitmap.createBitmap(pixels, width, height, Bitmap.Config.ARGB_8888)
    }
}

class LiteNeXtSegmenter(
    context: Context,
    assetName: String = "litenext_int8.tflite",
    numThreads: Int = 2,
    runtime: TfLiteRuntime = TfLiteRuntime.FROM_APPLICATION_ONLY, // FROM_SYSTEM_ONLY: Play services
) : AutoCloseable {
    private val interpreter: InterpreterApi
    val height: Int
    val width: Int
    val channels: Int
    private val inputType: DataType
    private val inputScale: Float
    private val inputZeroPoint: Int
    private val outputType: DataType
    private val outputScale: Float
    private val outputZeroPoint: Int
    private val input: ByteBuffer
    private val output: ByteBuffer
    private val pixels: IntArray

    init {
        // XNNPACK (the fast CPU path) is on by default; LiteRT 2.x's Interpreter has no GPU delegate.
        val options = InterpreterApi.Options().setNumThreads(numThreads).setRuntime(runtime)
        interpreter = InterpreterApi.create(loadModel(context, assetName), options)
        val inTensor = interpreter.getInputTensor(0)
        val outTensor = interpreter.getOutputTensor(0)
        val shape = inTensor.shape() // [1, height, width, channels], NHWC
        height = shape[1]
        width = shape[2]
        channels = shape[3]
        val outShape = outTensor.shape()
        require(outShape.contentEquals(intArrayOf(1, height, width, 1))) {
            "expected one logit per pixel [1, $height, $width, 1], got ${outShape.contentToString()}: " +
                "a K-class file needs an arg-max over the last axis (or MediaPipe's category mask)"
        }
        inputType = inTensor.dataType()
        inputScale = inTensor.quantizationParams().scale
        inputZeroPoint = inTensor.quantizationParams().zeroPoint
        outputType = outTensor.dataType()
        outputScale = outTensor.quantizationParams().scale
        outputZeroPoint = outTensor.quantizationParams().zeroPoint
        input = ByteBuffer.allocateDirect(inTensor.numBytes()).order(ByteOrder.nativeOrder())
        output = ByteBuffer.allocateDirect(outTensor.numBytes()).order(ByteOrder.nativeOrder())
        pixels = IntArray(width * height)
    }

    /** Segments `bitmap` (any size and config; resized to the model's input size). */
    fun segment(bitmap: Bitmap): SegmentationResult {
        // getPixels throws on HARDWARE bitmaps (API 26+, e.g. ImageDecoder's default): copy first.
        val readable = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O && bitmap.config == Bitmap.Config.HARDWARE)
            bitmap.copy(Bitmap.Config.ARGB_8888, false) else bitmap
        val resized = if (readable.width == width && readable.height == height) readable
                      else Bitmap.createScaledBitmap(readable, width, height, true) // bilinear
        resized.getPixels(pixels, 0, width, 0, 0, width, height)
        input.rewind()
        for (argb in pixels) {
            val r = (argb shr 16) and 0xFF
            val g = (argb shr 8) and 0xFF
            val b = argb and 0xFF
            if (channels == 3) {
                putPixel(r); putPixel(g); putPixel(b) // RGB order, as in training
            } else {
                putPixel((0.299f * r + 0.587f * g + 0.114f * b).roundToInt()) // grey, as OpenCV's BGR2GRAY
            }
        }
        input.rewind()
        output.rewind()
        interpreter.run(input, output)
        output.rewind()
        val n = width * height
        val logits = FloatArray(n)
        val mask = BooleanArray(n)
        for (i in 0 until n) {
            val logit = when (outputType) {
                DataType.FLOAT32 -> output.getFloat() // the default int8 file ends in a DEQUANTIZE
                DataType.INT8 -> (output.get().toInt() - outputZeroPoint) * outputScale
                DataType.UINT8 -> ((output.get().toInt() and 0xFF) - outputZeroPoint) * outputScale
                else -> throw IllegalStateException("unsupported output type $outputType")
            }
            logits[i] = logit
            mask[i] = logit > 0f // sigmoid(logit) > 0.5
        }
        return SegmentationResult(width, height, mask, logits)
    }

    /** One 0..255 pixel value into the input tensor, per the contract: q = round(p / 255 / scale) + zeroPoint. */
    private fun putPixel(p: Int) {
        when (inputType) {
            DataType.FLOAT32 -> input.putFloat(p / 255f)
            DataType.INT8 -> input.put(quantize(p, -128, 127).toByte())
            DataType.UINT8 -> input.put(quantize(p, 0, 255).toByte())
            else -> throw IllegalStateException("unsupported input type $inputType")
        }
    }

    private fun quantize(p: Int, min: Int, max: Int): Int =
        ((p / 255f / inputScale).roundToInt() + inputZeroPoint).coerceIn(min, max)

    override fun close() = interpreter.close()

    private companion object {
        fun loadModel(context: Context, assetName: String): MappedByteBuffer {
            context.assets.openFd(assetName).use { fd ->
                FileInputStream(fd.fileDescriptor).use { stream ->
                    return stream.channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }
        }
    }
}
