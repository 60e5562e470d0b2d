import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

/// Answers a connection's first request when it asks for an event stream: the router runs it as
/// any request (middleware, authorization, `EventStreamController`), and the response is written
/// straight to the channel. A stream the controller hands to the hub stays open after this returns.
/// The router's middleware runs here too, so the stream's request id and its opening response's
/// duration and status are recorded as for any other request.
struct EventStreamResponder: Sendable {
    let router: RouterResponder<OrderStatusRequestContext>
    let serverName: String?

    /// Mirrors the responder closure of `ApplicationProtocol.run()` (hummingbird 2.28.1,
    /// Sources/Hummingbird/Application.swift: request id, context, the 500 fallback, `Date` and
    /// `Server`) and `ResponseWriter.write(response:body:)` (Sources/HummingbirdCore/Response/ResponseWriter.swift).
    func respond(to head: HTTPRequest, on channel: any Channel, logger: Logger) async {
        var logger = logger
        logger[metadataKey: "hb.request.id"] = .stringConvertible(RequestID())
        let request = Request(head: head, body: .init(buffer: ByteBuffer()))
        let streamChannel = EventStreamChannel(channel)
        let context = OrderStatusRequestContext(source: .init(channel: channel, logger: logger), eventStreamAttachment: .channel(streamChannel))
        var response: Response
        do {
            response = try await router.respond(to: request, context: context)
        } catch {
            // ProblemMiddleware answers every error it sees; this is what slips past it.
            response = Response(status: .internalServerError)
        }
        // The id RequestIDMiddleware chose (the client's or the one made above), for this function's own lines.
        if let requestID = response.headers[.requestID] { logger[metadataKey: RequestIDs.metadataKey] = .string(requestID) }
        // The stream owns the connection: nothing can follow it on this connection.
        response.headers[.connection] = "close"
        response.headers[.date] = HTTPDate.now()
        if let serverName { response.headers[.server] = serverName }
        if let length = response.body.contentLength, response.headers[.contentLength] == nil {
            response.headers[.contentLength] = String(length)
        }
        let writer = ChannelResponseBodyWriter(channel: channel)
        do {
            // Not flushed on its own: the body's first write (the replay, or the end) takes the
            // head with it, in one system call.
            channel.write(HTTPResponsePart.head(response.head), promise: nil)
            try await response.body.write(writer)
        } catch {
            logger.debug("writing an event stream response failed", metadata: ["error": "\(error)"])
        }
        if !streamChannel.isHandedToHub { channel.close(promise: nil) }
    }
}

/// Writes a response body straight to an HTTP/1 channel, as Hummingbird's `RootResponseBodyWriter`
/// (Sources/HummingbirdCore/Response/ResponseWriter.swift) writes it to the `NIOAsyncChannel`.
struct ChannelResponseBodyWriter: ResponseBodyWriter {
    let channel: any Channel

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await channel.writeAndFlush(HTTPResponsePart.body(buffer))
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await channel.writeAndFlush(HTTPResponsePart.end(trailingHeaders))
    }
}
