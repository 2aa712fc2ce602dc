// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {EnumerableMap} from "@openzeppelin/contracts/utils/structs/EnumerableMap.sol";

/// @title FLB audit trail: data uploads, cumulative contribution scores and per-round digests.
/// @notice A round's full arrays live in its RoundRecorded event (found by its indexed round);
/// storage keeps two words per round, the global digest and a hash of the arrays, so a round
/// costs two new storage slots whatever the number of clients, and anyone can check a claimed
/// record against the chain with `verifyRound`.
contract FLB is Ownable {
    using EnumerableMap for EnumerableMap.AddressToUintMap;

    struct Round {
        bytes32 globalDigest;
        bytes32 recordHash;
    }

    EnumerableMap.AddressToUintMap private _scores;
    mapping(address => string[]) private _userData;
    mapping(bytes32 => address) private _uploaderOf;
    mapping(uint256 => Round) private _rounds;

    event ScoreAdd(address indexed user, uint256 score);
    event DataUpload(address indexed user);
    event RoundRecorded(
        uint256 indexed round,
        bytes32 globalDigest,
        address[] clients,
        bytes32[] updateDigests,
        uint256[] scores
    );

    constructor(address initialOwner) Ownable(initialOwner) {}

    /// @notice Add `score` points to `user`'s cumulative score.
    function addScore(address user, uint256 score) external onlyOwner {
        _addScore(user, score);
    }

    /// @notice Record a data upload (a content digest) by the sender; each datum once, ever.
    function uploadUserData(string calldata data) external {
        bytes32 key = keccak256(bytes(data));
        require(_uploaderOf[key] == address(0), "Data already uploaded");
        _uploaderOf[key] = msg.sender;
        _userData[msg.sender].push(data);
        if (!_scores.contains(msg.sender)) {
            _scores.set(msg.sender, 0);
        }
        emit DataUpload(msg.sender);
    }

    /// @notice One round in one transaction: its digests, and each client's score added.
    function recordRound(
        uint256 round,
        bytes32 globalDigest,
        address[] calldata clients,
        bytes32[] calldata updateDigests,
        uint256[] calldata scores
    ) external onlyOwner {
        require(clients.length == updateDigests.length && clients.length == scores.length, "Length mismatch");
        require(_rounds[round].recordHash == 0, "Round already recorded");
        for (uint256 i = 0; i < clients.length; i++) {
            _addScore(clients[i], scores[i]);
        }
        _rounds[round] = Round(globalDigest, _recordHash(clients, updateDigests, scores));
        emit RoundRecorded(round, globalDigest, clients, updateDigests, scores);
    }

    function getScore(address user) external view returns (uint256) {
        (, uint256 score) = _scores.tryGet(user);
        return score;
    }

    function getUserData(address user) external view returns (string[] memory) {
        return _userData[user];
    }

    function getUserDataCount(address user) external view returns (uint256) {
        return _userData[user].length;
    }

    function getUserCount() external view returns (uint256) {
        return _scores.length();
    }

    function getUserScore(uint256 index) external view returns (address user, uint256 score) {
        return _scores.at(index);
    }

    function userExists(address user) external view returns (bool) {
        return _scores.contains(user);
    }

    /// @notice Who uploaded `data`, or the zero address when nobody has.
    function uploaderOf(string calldata data) external view returns (address) {
        return _uploaderOf[keccak256(bytes(data))];
    }

    /// @notice A round's stored words; its arrays are in the RoundRecorded event with this round.
    function getRound(uint256 round) external view returns (bytes32 globalDigest, bytes32 recordHash) {
        Round storage r = _rounds[round];
        return (r.globalDigest, r.recordHash);
    }

    function roundExists(uint256 round) external view returns (bool) {
        return _rounds[round].recordHash != 0;
    }

    /// @notice True when the given arrays are exactly what was recorded for `round`.
    function verifyRound(
        uint256 round,
        bytes32 globalDigest,
        address[] calldata clients,
        bytes32[] calldata updateDigests,
        uint256[] calldata scores
    ) external view returns (bool) {
        Round storage r = _rounds[round];
        return r.recordHash != 0 && r.globalDigest == globalDigest
            && r.recordHash == _recordHash(clients, updateDigests, scores);
    }

    function _addScore(address user, uint256 score) private {
        (, uint256 current) = _scores.tryGet(user);
        _scores.set(user, current + score);
        emit ScoreAdd(user, score);
    }

    function _recordHash(address[] calldata clients, bytes32[] calldata updateDigests, uint256[] calldata scores)
        private
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(clients, updateDigests, scores));
    }
}
