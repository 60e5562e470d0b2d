import Foundation
import NIOSSL

/// The certificate and key that turn on HTTPS with HTTP/2 (see `HTTPServerBuilder.orderStatusHTTP2`).
enum ServerTLS {
    /// Reads TLS_CERTIFICATE_FILE and TLS_PRIVATE_KEY_FILE: nil when neither is set. Both files are
    /// loaded here, so a missing file or a key that does not match the certificate stops startup
    /// instead of failing every handshake later.
    static func read(from source: SettingsSource) throws(ConfigurationError) -> TLSConfiguration? {
        switch (source.given("TLS_CERTIFICATE_FILE"), source.given("TLS_PRIVATE_KEY_FILE")) {
        case (nil, nil):
            return nil
        case (_?, nil):
            throw ConfigurationError("TLS_CERTIFICATE_FILE is set but TLS_PRIVATE_KEY_FILE is not: give both for HTTPS and HTTP/2, or neither")
        case (nil, _?):
            throw ConfigurationError("TLS_PRIVATE_KEY_FILE is set but TLS_CERTIFICATE_FILE is not: give both for HTTPS and HTTP/2, or neither")
        case (let certificatePath?, let keyPath?):
            let chain = try certificates(at: certificatePath)
            let key = try privateKey(at: keyPath)
            let configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            // BoringSSL compares the key with the leaf certificate when the context is made.
            guard (try? NIOSSLContext(configuration: configuration)) != nil else {
                throw ConfigurationError(
                    "TLS_PRIVATE_KEY_FILE '\(keyPath)' is not the key of the certificate in TLS_CERTIFICATE_FILE '\(certificatePath)'")
            }
            return configuration
        }
    }

    private static func certificates(at path: String) throws(ConfigurationError) -> [NIOSSLCertificate] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError("TLS_CERTIFICATE_FILE: cannot read '\(path)'")
        }
        guard let chain = try? NIOSSLCertificate.fromPEMBytes(Array(data)), !chain.isEmpty else {
            throw ConfigurationError("TLS_CERTIFICATE_FILE: '\(path)' holds no PEM certificate")
        }
        return chain
    }

    private static func privateKey(at path: String) throws(ConfigurationError) -> NIOSSLPrivateKey {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError("TLS_PRIVATE_KEY_FILE: cannot read '\(path)'")
        }
        guard let key = try? NIOSSLPrivateKey(bytes: Array(data), format: .pem) else {
            throw ConfigurationError("TLS_PRIVATE_KEY_FILE: '\(path)' holds no unencrypted PEM private key")
        }
        return key
    }
}
