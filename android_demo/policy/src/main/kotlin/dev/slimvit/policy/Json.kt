package dev.slimvit.policy

/**
 * A small JSON reader with no dependencies, so the policy module builds with plain kotlinc on
 * the JVM (the conformance test) as well as inside the Android app.
 * Objects become LinkedHashMap<String, Any?>, arrays List<Any?>, numbers Double or Long.
 */
class JsonException(message: String) : Exception(message)

object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value()
        p.skipWs()
        if (p.pos != text.length) throw p.error("trailing characters")
        return v
    }

    private class Parser(val s: String) {
        var pos = 0

        fun error(what: String) = JsonException("invalid JSON at offset $pos: $what")

        fun skipWs() {
            while (pos < s.length && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t')) pos++
        }

        fun value(): Any? {
            if (pos >= s.length) throw error("unexpected end")
            return when (s[pos]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> num()
            }
        }

        fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) throw error("expected $word")
            pos += word.length
            return v
        }

        fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipWs()
            if (pos < s.length && s[pos] == '}') { pos++; return out }
            while (true) {
                skipWs()
                if (pos >= s.length || s[pos] != '"') throw error("expected a key")
                val k = str()
                skipWs()
                if (pos >= s.length || s[pos] != ':') throw error("expected ':'")
                pos++
                skipWs()
                out[k] = value()
                skipWs()
                if (pos >= s.length) throw error("unterminated object")
                if (s[pos] == ',') { pos++; continue }
                if (s[pos] == '}') { pos++; return out }
                throw error("expected ',' or '}'")
            }
        }

        fun arr(): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipWs()
            if (pos < s.length && s[pos] == ']') { pos++; return out }
            while (true) {
                skipWs()
                out.add(value())
                skipWs()
                if (pos >= s.length) throw error("unterminated array")
                if (s[pos] == ',') { pos++; continue }
                if (s[pos] == ']') { pos++; return out }
                throw error("expected ',' or ']'")
            }
        }

        fun str(): String {
            val sb = StringBuilder()
            pos++
            while (true) {
                if (pos >= s.length) throw error("unterminated string")
                val c = s[pos++]
                when (c) {
                    '"' -> return sb.toString()
                    '\\' -> {
                        if (pos >= s.length) throw error("bad escape")
                        when (val e = s[pos++]) {
                            '"', '\\', '/' -> sb.append(e)
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) throw error("bad unicode escape")
                                sb.append(s.substring(pos, pos + 4).toInt(16).toChar())
                                pos += 4
                            }
                            else -> throw error("bad escape \\$e")
                        }
                    }
                    else -> sb.append(c)
                }
            }
        }

        fun num(): Any {
            val start = pos
            while (pos < s.length && (s[pos].isDigit() || s[pos] in "+-.eE")) pos++
            val t = s.substring(start, pos)
            if (t.isEmpty()) throw error("unexpected character '${s[start]}'")
            return if (t.any { it == '.' || it == 'e' || it == 'E' }) {
                t.toDoubleOrNull() ?: throw error("bad number $t")
            } else {
                t.toLongOrNull() ?: throw error("bad number $t")
            }
        }
    }
}

/** Typed accessors with errors that name the field. */
internal fun Any?.obj(what: String): Map<String, Any?> =
    (this as? Map<*, *>)?.let { m -> m.entries.associate { it.key.toString() to it.value } }
        ?: throw JsonException("\"$what\" must be an object")

internal fun Any?.list(what: String): List<Any?> = this as? List<Any?> ?: throw JsonException("\"$what\" must be a list")

internal fun Any?.int(what: String): Int {
    val n = this as? Number ?: throw JsonException("\"$what\" must be an integer")
    if (n is Double && n != Math.floor(n)) throw JsonException("\"$what\" must be an integer, got $n")
    return n.toInt()
}

internal fun Any?.long(what: String): Long = (this as? Number)?.toLong() ?: throw JsonException("\"$what\" must be an integer")

internal fun Any?.num(what: String): Double = (this as? Number)?.toDouble() ?: throw JsonException("\"$what\" must be a number")

internal fun Any?.str(what: String): String = this as? String ?: throw JsonException("\"$what\" must be a string")

internal fun Any?.bool(what: String): Boolean = this as? Boolean ?: throw JsonException("\"$what\" must be true or false")
