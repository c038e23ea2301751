// Binary segmentation with a LiteNeXt .tflite file on Android (LiteRT Interpreter API).
//
// Dependency (app/build.gradle.kts):
//     implementation("com.google.ai.edge.litert:litert:2.1.0")   // or newer
//     android { androidResources { noCompress += "tflite" } }     // so the model can be memory-mapped
//
// The model file and its I/O contract (<name>_int8.tflite and <name>_int8.json from
// tflite/convert.py) go into app/src/main/assets/. The class reads size, dtype, scale and zero
// point from the model itself, so it works for the int8, uint8 and float files alike.

package com.example.litenext

import android.content.Context
import android.graphics.Bitmap
import android.graphics.Color
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import kotlin.math.roundToInt
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter

/** A mask at the model's resolution: `mask[y * width + x]` is true for foreground. */
class SegmentationResult(val width: Int, val height: Int, val mask: BooleanArray, val logits: FloatArray) {
    /** The mask as an ARGB bitmap (foreground `color`, background transparent), at the model size. */
    fun toBitmap(color: Int = Color.argb(128, 255, 0, 0)): Bitmap {
        val pixels = IntArray(width * height) { if (mask[it]) color else Color.TRANSPARENT }
        return Bitmap.createBitmap(pixels, width, height, Bitmap.Config.ARGB_8888)
    }
}

class LiteNeXtSegmenter(context: Context, assetName: String = "litenext_int8.tflite", numThreads: Int = 2) : AutoCloseable {
    private val interpreter: Interpreter
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
        val options = Interpreter.Options()
        options.setNumThreads(numThreads)
        options.setUseXNNPACK(true) // XNNPACK: the fast CPU path (on by default in recent releases)
        interpreter = Interpreter(loadModel(context, assetName), options)
        val inTensor = interpreter.getInputTensor(0)
        val outTensor = interpreter.getOutputTensor(0)
        val shape = inTensor.shape() // [1, height, width, channels], NHWC
        height = shape[1]
        width = shape[2]
        channels = shape[3]
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

    /** Segments `bitmap` (any size; resized to the model's input size). */
    fun segment(bitmap: Bitmap): SegmentationResult {
        val resized = if (bitmap.width == width && bitmap.height == height) bitmap
                      else Bitmap.createScaledBitmap(bitmap, width, height, true) // bilinear
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
                DataType.INT8 -> (output.get().toInt() - outputZeroPoint) * outputScale
                DataType.UINT8 -> ((output.get().toInt() and 0xFF) - outputZeroPoint) * outputScale
                else -> output.getFloat()
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
