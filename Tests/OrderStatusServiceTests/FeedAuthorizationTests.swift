import Foundation
import Testing

@testable import OrderStatusService

/// Authorization on the feeds: the feed of every order needs the read scope; a filtered feed
/// needs each listed order allowed; 401 and 403 come before any other error.
@Suite("Feed authorization", .timeLimit(.minutes(2)))
struct FeedAuthorizationTests {
    let tokens = AuthorizationTests()

    @Test func theFeedOfEveryOrderNeedsTheReadScopeAndAFilteredFeedEachListedOrder() async throws {
        try await TestService.with(settings: AuthorizationTests.hs256) { service in
            let writer = try await tokens.token(scope: "orders:write")
            let mine = try await tokens.createOrder(service, status: "delivered", token: writer)
            let other = try await tokens.createOrder(service, status: "delivered", token: writer)
            let reader = try await tokens.token(scope: "orders:read")
            let named = try await tokens.token(orders: [mine])
            for route in ["/events/order-status", "/poll/order-status"] {
                try tokens.expectProblem(try await service.get(route), 401, "\(route) without a token")
                try tokens.expectProblem(try await service.get("\(route)?order=\(mine)"), 401, "\(route) filtered without a token")
                try tokens.expectProblem(
                    try await service.get(route, headers: tokens.bearer(named)), 403, "\(route) of every order, orders claim only")
                try tokens.expectProblem(
                    try await service.get("\(route)?order=\(mine)&order=\(other)", headers: tokens.bearer(named)), 403,
                    "\(route) listing an order the token does not name")
                // Refusals come before any other error: a malformed id, a bad cursor, an unknown order.
                try tokens.expectProblem(try await service.get("\(route)?order=-bad", headers: tokens.bearer(named)), 403, "\(route) malformed id")
                try tokens.expectProblem(try await service.get("\(route)?lastEventId=x&after=x"), 401, "\(route) bad cursor, no token")
                let unknown = uniqueOrderID("N")
                try tokens.expectProblem(
                    try await service.get("\(route)?order=\(unknown)", headers: tokens.bearer(named)), 403, "\(route) unknown order")
                // Allowed: the order the token names, and with the scope any order or all.
                #expect(try await service.get("\(route)?order=\(mine)", headers: tokens.bearer(named)).status == 200, "\(route) named order")
                #expect(
                    try await service.get("\(route)?order=\(mine)&order=\(other)", headers: tokens.bearer(reader)).status == 200,
                    "\(route) with the scope")
                #expect(try await service.get("\(route)?order=\(unknown)", headers: tokens.bearer(reader)).status == 404, "\(route) unknown, scope")
            }
            let poll = try await service.get("/poll/order-status?timeout=0", headers: tokens.bearer(reader))
            #expect(poll.status == 200, "the poll of every order with the scope: \(poll.body)")
            #expect(try await service.metric("order_status_held_polls") == 0)
        }
    }

    /// A feed ends when its token stops being accepted, as an order's stream does; the reconnect is 401.
    @Test func aFeedEndsWhenItsTokenExpires() async throws {
        try await TestService.with(settings: AuthorizationTests.hs256) { service in
            let writer = try await tokens.token(scope: "orders:write")
            let id = try await tokens.createOrder(service, token: writer)
            let reader = try await tokens.token(scope: "orders:read")
            // Its creation past the frontier first, so neither feed gets it live.
            let creation = try await FeedConnection.open(service, orders: [id], cursor: "0", headers: tokens.bearer(reader))
            _ = try await creation.events(1)
            creation.close()
            let lasting = try await FeedConnection.open(service, orders: [id], headers: tokens.bearer(reader))
            // Made only now: on a loaded machine the steps above have taken longer than its life.
            let (expiring, acceptedUntil) = try await tokens.tokenAccepted(for: 8, orders: [id])
            let named = try await FeedConnection.open(service, orders: [id], headers: tokens.bearer(expiring))
            _ = try await lasting.untilCaughtUp()
            _ = try await named.untilCaughtUp()
            #expect(try await named.readToEnd(within: .seconds(15)).isEmpty)
            AuthorizationTests.expectEnded(at: Date(), acceptedUntil: acceptedUntil, "a filtered feed")
            let again = try await service.get("/events/order-status?order=\(id)", headers: tokens.bearer(expiring))
            try tokens.expectProblem(again, 401, "reconnect with the expired token")
            #expect(try await service.metric("order_status_streams_expired_total") == 1)
            // A feed of the same order with a lasting token goes on.
            try await service.post("/orders/\(id)/status", #"{"status":"paid"}"#, headers: tokens.bearer(writer))
            #expect(try await FeedTests.firstEvent(of: id, on: lasting).status == "paid")
            lasting.close()
        }
    }
}
