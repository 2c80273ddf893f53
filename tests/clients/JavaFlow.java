// A legacy Coupa integration written against the JDK alone, run by tests/clients.rs
// through keybridge: `java JavaFlow.java <base-url> <key> <client>` where <client> is
//   httpclient        java.net.http.HttpClient as shipped (prefers HTTP/2: an h2c
//                     upgrade offer on http://, ALPN h2 on https://)
//   httpclient-http1  the same, pinned to HTTP/1.1
//   urlconnection     java.net.HttpURLConnection, with Coupa's fields=[…] query raw
// It pages XML and JSON, sends an XML POST, a 5 MB chunked PUT, a PUT with
// `Expect: 100-continue` and a gzip GET, checks every answer, prints one line per step
// and exits 1 on the first mismatch.
import java.io.*;
import java.net.*;
import java.net.http.*;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.HexFormat;
import java.util.zip.GZIPInputStream;

public class JavaFlow {
    static final int BIG = 5 * 1024 * 1024;
    static String base, key;

    public static void main(String[] args) throws Exception {
        base = args[0];
        key = args[1];
        String client = args[2];
        try {
            if (client.equals("urlconnection")) urlConnection();
            else httpClient(client.equals("httpclient-http1"));
        } catch (Exception e) {
            System.out.println("FAIL " + e);
            System.exit(1);
        }
        System.out.println("DONE");
    }

    static byte[] big() {
        byte[] b = new byte[BIG];
        for (int i = 0; i < BIG; i++) b[i] = (byte) (i % 251);
        return b;
    }

    static String sha256(byte[] b) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(b));
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException(what);
        System.out.println("ok " + what);
    }

    static final String XML = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        + "<invoice-header><invoice-number>INV-7</invoice-number><supplier><name>Acme</name></supplier></invoice-header>\n";

    // ---- java.net.http.HttpClient ----
    static void httpClient(boolean http1) throws Exception {
        HttpClient.Builder b = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10));
        if (http1) b.version(HttpClient.Version.HTTP_1_1);
        HttpClient c = b.build();
        for (String accept : new String[] {"application/xml", "application/json"}) {
            int total = 0, offset = 0;
            while (true) {
                HttpResponse<String> r = c.send(get("/api/invoices?limit=2&offset=" + offset)
                    .header("Accept", accept).build(), HttpResponse.BodyHandlers.ofString());
                check(r.statusCode() == 200, accept + " page at offset " + offset + ": " + r.statusCode());
                int n = accept.endsWith("xml") ? count(r.body(), "<invoice-header>") : count(r.body(), "\"invoice-number\"");
                total += n;
                offset += 2;
                if (n < 2) break;
            }
            check(total == 5, accept + " paging saw all 5 invoices (" + total + ")");
        }
        // java.net.URI refuses a raw `"`: HttpClient users encode it.
        HttpResponse<String> f = c.send(get("/api/invoices?fields=%5B%22id%22,%7B%22supplier%22:%5B%22name%22%5D%7D%5D").build(),
            HttpResponse.BodyHandlers.ofString());
        check(f.statusCode() == 200, "fields=[…] query: " + f.statusCode());
        HttpResponse<String> p = c.send(req("/api/invoices").header("Content-Type", "application/xml")
            .POST(HttpRequest.BodyPublishers.ofString(XML)).build(), HttpResponse.BodyHandlers.ofString());
        check(p.statusCode() == 200 && p.body().equals(XML), "XML POST echoed: " + p.statusCode());
        byte[] big = big();
        // ofInputStream has no length: sent chunked over HTTP/1.1, as DATA frames over HTTP/2.
        HttpResponse<byte[]> u = c.send(req("/api/invoices/7/image_scan").header("Content-Type", "application/octet-stream")
            .PUT(HttpRequest.BodyPublishers.ofInputStream(() -> new ByteArrayInputStream(big))).build(),
            HttpResponse.BodyHandlers.ofByteArray());
        check(u.statusCode() == 200 && sha256(u.body()).equals(sha256(big)), "5 MB chunked PUT echoed byte-exact: " + u.statusCode());
        byte[] small = new byte[65536];
        HttpResponse<byte[]> e = c.send(req("/api/invoices/7").expectContinue(true).header("Content-Type", "application/octet-stream")
            .PUT(HttpRequest.BodyPublishers.ofByteArray(small)).build(), HttpResponse.BodyHandlers.ofByteArray());
        check(e.statusCode() == 200 && e.body().length == small.length, "PUT with Expect: 100-continue: " + e.statusCode());
        HttpResponse<byte[]> g = c.send(get("/api/invoices/1").header("Accept-Encoding", "gzip").build(),
            HttpResponse.BodyHandlers.ofByteArray());
        String gz = new String(new GZIPInputStream(new ByteArrayInputStream(g.body())).readAllBytes(), StandardCharsets.UTF_8);
        check(g.statusCode() == 200 && g.headers().firstValue("content-encoding").orElse("").equals("gzip")
            && gz.contains("INV-0001"), "gzip GET decoded");
        HttpResponse<String> d = c.send(HttpRequest.newBuilder(URI.create(base + "/api/invoices/1"))
            .header("X-COUPA-API-KEY", "not-a-key-of-ours").build(), HttpResponse.BodyHandlers.ofString());
        check(d.statusCode() == 401 && d.headers().firstValue("www-authenticate").orElse("").contains("X-COUPA-API-KEY"),
            "an unknown key gets 401 with WWW-Authenticate");
        System.out.println("version " + g.version());
    }

    static HttpRequest.Builder req(String path) {
        return HttpRequest.newBuilder(URI.create(base + path)).timeout(Duration.ofSeconds(30)).header("X-COUPA-API-KEY", key);
    }

    static HttpRequest.Builder get(String path) {
        return req(path).GET();
    }

    static int count(String s, String needle) {
        int n = 0;
        for (int i = s.indexOf(needle); i >= 0; i = s.indexOf(needle, i + 1)) n++;
        return n;
    }

    // ---- java.net.HttpURLConnection ----
    static HttpURLConnection open(String path, String method) throws Exception {
        // new URL(String) keeps a raw `"` as it is, and HttpURLConnection sends it raw.
        HttpURLConnection c = (HttpURLConnection) new URL(base + path).openConnection();
        c.setRequestMethod(method);
        c.setConnectTimeout(10000);
        c.setReadTimeout(30000);
        c.setRequestProperty("X-COUPA-API-KEY", key);
        return c;
    }

    static byte[] read(HttpURLConnection c) throws Exception {
        try (InputStream in = c.getResponseCode() < 400 ? c.getInputStream() : c.getErrorStream()) {
            return in == null ? new byte[0] : in.readAllBytes();
        }
    }

    static void urlConnection() throws Exception {
        for (String accept : new String[] {"application/xml", "application/json"}) {
            int total = 0, offset = 0;
            while (true) {
                HttpURLConnection c = open("/api/invoices?limit=2&offset=" + offset, "GET");
                c.setRequestProperty("Accept", accept);
                String body = new String(read(c), StandardCharsets.UTF_8);
                check(c.getResponseCode() == 200, accept + " page at offset " + offset);
                int n = accept.endsWith("xml") ? count(body, "<invoice-header>") : count(body, "\"invoice-number\"");
                total += n;
                offset += 2;
                if (n < 2) break;
            }
            check(total == 5, accept + " paging saw all 5 invoices (" + total + ")");
        }
        HttpURLConnection f = open("/api/invoices?fields=[\"id\",{\"supplier\":[\"name\"]}]", "GET");
        read(f);
        check(f.getResponseCode() == 200, "raw fields=[\"id\",…] query: " + f.getResponseCode());
        HttpURLConnection p = open("/api/invoices", "POST");
        p.setDoOutput(true);
        p.setRequestProperty("Content-Type", "application/xml");
        try (OutputStream o = p.getOutputStream()) { o.write(XML.getBytes(StandardCharsets.UTF_8)); }
        check(p.getResponseCode() == 200 && new String(read(p), StandardCharsets.UTF_8).equals(XML), "XML POST echoed");
        byte[] big = big();
        HttpURLConnection u = open("/api/invoices/7/image_scan", "PUT");
        u.setDoOutput(true);
        u.setChunkedStreamingMode(64 * 1024);
        u.setRequestProperty("Content-Type", "application/octet-stream");
        try (OutputStream o = u.getOutputStream()) { o.write(big); }
        check(u.getResponseCode() == 200 && sha256(read(u)).equals(sha256(big)), "5 MB chunked PUT echoed byte-exact");
        HttpURLConnection e = open("/api/invoices/7", "PUT");
        e.setDoOutput(true);
        e.setFixedLengthStreamingMode(65536);
        e.setRequestProperty("Expect", "100-continue");
        e.setRequestProperty("Content-Type", "application/octet-stream");
        try (OutputStream o = e.getOutputStream()) { o.write(new byte[65536]); }
        check(e.getResponseCode() == 200 && read(e).length == 65536, "PUT with Expect: 100-continue");
        HttpURLConnection g = open("/api/invoices/1", "GET");
        g.setRequestProperty("Accept-Encoding", "gzip");
        byte[] raw = read(g);
        String gz = new String(new GZIPInputStream(new ByteArrayInputStream(raw)).readAllBytes(), StandardCharsets.UTF_8);
        check(g.getResponseCode() == 200 && "gzip".equals(g.getContentEncoding()) && gz.contains("INV-0001"), "gzip GET decoded");
        HttpURLConnection d = open("/api/invoices/1", "GET");
        d.setRequestProperty("X-COUPA-API-KEY", "not-a-key-of-ours");
        read(d);
        check(d.getResponseCode() == 401 && String.valueOf(d.getHeaderField("WWW-Authenticate")).contains("X-COUPA-API-KEY"),
            "an unknown key gets 401 with WWW-Authenticate");
    }
}
