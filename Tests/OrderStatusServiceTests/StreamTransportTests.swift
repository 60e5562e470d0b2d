import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore
import NIOHTTPTypes
import ServiceLifecycle
import Testing

@testable import OrderStatusService

/// The HTTP/1 path that serves a connection's first request when it is a stream, outside
/// Hummingbird's request loop, against what that loop does for every other response.
@Suite("Stream transport", .timeLimit(.minutes(5)))
struct StreamTransportTests {
    @Test func streamAnswersOnTheirOwnConnectionCarryDate() async throws {
        try await TestService.with { service in
            let done = uniqueOrderID("D")
            try await service.createOrder(done, status: "delivered")
            for (path, status) in [("/events/order-status/\(done)", 200), ("/events/order-status/nope-\(done)", 404)] {
                let answer = try await RawResponse.exchange("GET \(path) HTTP/1.1\r\nHost: x\r\n\r\n", port: service.port)
                #expect(answer.status == status, "\(path)")
                try Self.expectCurrentDate(answer.headers["date"], "\(path)")
            }
            // What Hummingbird writes on its own responses, for comparison.
            try Self.expectCurrentDate(try await service.get("/healthz").headers.first(name: "date"), "Hummingbird's own")
        }
        try await TestService.with(settings: AuthorizationTests.hs256) { service in
            let refused = try await RawResponse.exchange("GET /events/order-status/A1 HTTP/1.1\r\nHost: x\r\n\r\n", port: service.port)
            #expect(refused.status == 401)
            try Self.expectCurrentDate(refused.headers["date"], "401")
        }
    }

    /// An IMF-fixdate (RFC 9110 §5.6.7) within a minute of now.
    static func expectCurrentDate(_ value: String?, _ note: Comment) throws {
        let value = try #require(value, note)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let date = try #require(formatter.date(from: value), "\(note): \(value)")
        #expect(formatter.string(from: date) == value, "\(note): the weekday and padding agree")
        #expect(abs(date.timeIntervalSinceNow) < 60, "\(note): \(value) is now")
    }

    /// The handlers an HTTP/1 configuration adds (as `HTTP1Channel` honours them) see a stream
    /// answered outside Hummingbird's loop as well as any other request.
    @Test func additionalChannelHandlersServeStreamsToo() async throws {
        let router = Router(context: OrderStatusRequestContext.self)
        router.get(EventStreamPath.route) { _, _ in "a stream" }
        router.get("/other") { _, _ in "not a stream" }
        let (ports, portSource) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router,
            server: .orderStatusHTTP1(
                configuration: .init(additionalChannelHandlers: [ResponseStamp()]),
                eventStreams: EventStreamResponder(router: router.buildResponder(), serverName: nil),
                bounds: .init(requestReadTimeout: .seconds(10), writeStallTimeout: .seconds(30))
            ),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                portSource.yield(channel.localAddress?.port ?? 0)
                portSource.finish()
            },
            logger: testLogger
        )
        let services = ServiceGroup(configuration: .init(services: [app], logger: testLogger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await services.run() }
            var iterator = ports.makeAsyncIterator()
            let port = try #require(await iterator.next())
            let stream = try await RawResponse.exchange("GET /events/order-status/A1 HTTP/1.1\r\nHost: x\r\n\r\n", port: port)
            #expect(stream.body == "a stream")
            #expect(stream.headers["x-stamp"] == "1", "\(stream.headers)")
            let other = try await RawResponse.exchange("GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", port: port)
            #expect(other.body == "not a stream")
            #expect(other.headers["x-stamp"] == "1", "\(other.headers)")
            await services.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }
}

/// Marks every response head it writes.
private final class ResponseStamp: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .head(var head) = unwrapOutboundIn(data) else { return context.write(data, promise: promise) }
        head.headerFields[HTTPField.Name("X-Stamp")!] = "1"
        context.write(wrapOutboundOut(.head(head)), promise: promise)
    }
}
