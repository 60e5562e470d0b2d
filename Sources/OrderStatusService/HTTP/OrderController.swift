import Hummingbird
import NIOCore

/// The REST endpoints that create, read and change orders.
struct OrderController<Context: RequestContext> {
    let store: OrderStore

    func addRoutes(to group: RouterGroup<Context>) {
        group.post(use: create).allow([.post])
        group.get(":id", use: get).allow([.get], on: ":id")
        group.post(":id/status", use: changeStatus).allow([.post], on: ":id/status")
        group.get(":id/events", use: events).allow([.get], on: ":id/events")
    }

    @Sendable func create(_ request: Request, context: Context) async throws -> Response {
        let newOrder = try NewOrder(json: try await RequestParsing.jsonBody(request))
        let (order, _) = try await store.create(newOrder)
        return JSONResponse.make(order.json, status: .created, headers: [.location: "/orders/\(order.id)", .eTag: "\"\(order.version)\""])
    }

    @Sendable func get(_ request: Request, context: Context) async throws -> Response {
        let id = try RequestParsing.orderID(context)
        guard let order = try await store.order(id) else { throw Problem.orderNotFound(id.rawValue) }
        return JSONResponse.make(order.json, headers: [.eTag: "\"\(order.version)\""])
    }

    @Sendable func changeStatus(_ request: Request, context: Context) async throws -> Response {
        // The contract's error order: 400 (headers, then JSON syntax), 413, 422, 404, 412, 409.
        let ifMatch = try RequestParsing.ifMatch(request)
        let change = try StatusChange(json: try await RequestParsing.jsonBody(request))
        let id = try RequestParsing.orderID(context)
        let allowedVersions: Set<Int>? =
            switch ifMatch {
            case .versions(let versions): Set(versions)
            case .any, nil: nil
            }
        switch try await store.changeStatus(of: id, to: change, allowedVersions: allowedVersions) {
        case .changed(let order, let event):
            return JSONResponse.make("{\"order\":\(order.json),\"event\":\(event.json)}", headers: [.eTag: "\"\(order.version)\""])
        case .unchanged(let order):
            return JSONResponse.make("{\"order\":\(order.json),\"event\":null}", headers: [.eTag: "\"\(order.version)\""])
        }
    }

    @Sendable func events(_ request: Request, context: Context) async throws -> Response {
        let after = try RequestParsing.integer("after", in: 0...Int64.max, from: request) ?? 0
        let limit = try RequestParsing.integer("limit", in: 1...1000, from: request) ?? 100
        let id = try RequestParsing.orderID(context)
        guard let page = try await store.events(of: id, after: after, limit: Int(limit)) else { throw Problem.orderNotFound(id.rawValue) }
        let events = JSONResponse.array(page.events.map { ByteBuffer(string: $0.json) })
        var body = ByteBuffer(string: "{\"events\":")
        body.writeImmutableBuffer(events)
        body.writeStaticString("}")
        return JSONResponse.make(body)
    }
}
